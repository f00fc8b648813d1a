"""A server that asks a site for the same set-up statistics twice, under participant sets that
differ by one site, to subtract the two masked sums and read that site's statistics
(``--key-holder server``).

Each pass (standardisation, and a table's imputation passes) is masked with its own label, and a
site sends each pass under one participant set only: asked again under another set, it refuses.
"""

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer

from torchhefl.exceptions import ProtocolError
from torchhefl.federated import TrainConfig, build
from torchhefl.federated.messages import STATS_INS, encode_request
from torchhefl.federated.statistics import IMPUTE, STANDARDIZE


@pytest.fixture(scope="module")
def gappy_csv(tmp_path_factory):
    bunch = load_breast_cancer()
    frame = pd.DataFrame(bunch.data[:, :6], columns=bunch.feature_names[:6])
    frame["diagnosis"] = bunch.target
    frame.iloc[:10, 0] = np.nan
    path = tmp_path_factory.mktemp("gaps") / "gappy.csv"
    frame.to_csv(path, index=False)
    return path


@pytest.mark.parametrize("purpose", [IMPUTE, STANDARDIZE])
def test_a_site_sends_each_pass_under_one_participant_set_only(gappy_csv, purpose):
    config = TrainConfig(mode="he", key_holder="server", clip_norm=None, rounds=1, clients=3, key_bits=512,
                         data=str(gappy_csv), label="diagnosis", extra={"allow_insecure_keys": True})
    sim = build(config)
    sim.server.setup()  # every site sent each pass once, under the set of all three
    client = sim.clients[0]
    masker = client.exchange.masker
    masker._seeds.pop(masker.peers[-1])  # as if the server had relayed a key list one site short
    meta = {} if purpose == STANDARDIZE else {"purpose": purpose}
    with pytest.raises(ProtocolError, match=f"already sent its {purpose} statistics under another participant set"):
        client.handle(encode_request(STATS_INS, meta))
