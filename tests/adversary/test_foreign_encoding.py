"""The attack: one site uploads in a packed encoding other than the run's agreed one.

The run config fixes the encoding of every upload (``--he-resolution``, like the key). A site
that packs its update otherwise (wider or narrower slots, another scale) would have the server
read its slots at the wrong offsets, overflow the others' headroom or make the sum fail to decrypt
at every site; a relayer that re-labelled bytes would have them read in an encoding of its choosing.
The site here is a real :class:`~torchhefl.federated.Client` that reads the global model in the
agreed encoding and encrypts its own upload in another. The attack fails when the server refuses
that upload by its header (``unsupported encoding parameters``), every round completes without the
site, and the model is exactly the one the other sites train without it.
"""

import warnings

import pytest
import torch

from torchhefl.federated import TrainConfig, build
from torchhefl.secure import STATE_DICT_FIXED_POINT, InsecureKeyWarning, packing

ROUNDS = 2
#: (the run's --he-resolution, the encoding the hostile site packs in)
CASES = {
    "coarse run, site at the default": (1e-2, STATE_DICT_FIXED_POINT),
    "default run, site coarser": (None, packing.precision(resolution=1e-2, max_abs=8192.0, max_total_weight=packing.MAX_TOTAL_WEIGHT)),
    "coarse run, site with less headroom": (1e-2, packing.precision(resolution=1e-2, max_abs=8192.0, max_total_weight=1023)),
}


def _sim(resolution):
    cfg = TrainConfig(mode="he", key_holder="clients", rounds=ROUNDS, key_bits=512, he_resolution=resolution,
                      extra={"allow_insecure_keys": True})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyWarning)
        return build(cfg)


def _pack_uploads_in(exchange, foreign) -> None:
    """The one behaviour changed: the site encrypts its uploads in ``foreign`` (and reads as agreed),
    claiming a weight bound that encoding holds."""
    honest = exchange.write_update_for

    def write_update_for(*args, **kwargs):
        agreed = exchange.precision, exchange.weight_bound
        exchange.precision = foreign
        exchange.weight_bound = min(exchange.weight_bound, foreign.max_total_weight // 3)
        try:
            return honest(*args, **kwargs)
        finally:
            exchange.precision, exchange.weight_bound = agreed

    exchange.write_update_for = write_update_for


def _run(resolution, foreign=None):
    sim = _sim(resolution)
    sim.server.setup()
    if foreign is None:
        sim.transport.fail = {"site0"}  # the run had site0 never answer a round
    else:
        assert foreign != sim.clients[0].exchange.precision
        _pack_uploads_in(sim.clients[0].exchange, foreign)
    results = [sim.server.run_round(r) for r in range(1, ROUNDS + 1)]
    return results, sim.final_state()


@pytest.mark.parametrize("case", list(CASES))
def test_an_upload_in_another_encoding_leaves_out_only_its_sender(case):
    resolution, foreign = CASES[case]
    results, model = _run(resolution, foreign)
    expected_results, expected = _run(resolution)
    for result, honest in zip(results, expected_results):
        assert result["clients"] == ["site1", "site2"] == honest["clients"]
        assert result["dropped"] == ["site0"]
        assert "unsupported encoding parameters" in result["rejected"]["site0"], result["rejected"]
    for k in expected:
        assert torch.equal(model[k], expected[k]), (k, model[k], expected[k])


def test_the_control_an_upload_in_the_agreed_encoding_is_summed():
    resolution, _ = CASES["coarse run, site at the default"]
    sim = _sim(resolution)
    _pack_uploads_in(sim.clients[0].exchange, sim.clients[0].exchange.precision)
    sim.server.setup()
    assert sim.server.run_round(1)["clients"] == ["site0", "site1", "site2"]
