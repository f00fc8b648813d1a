import warnings

import pytest

from torchhefl.secure import InsecureKeyWarning, generate_keypair


@pytest.fixture(scope="module")
def keypair():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyWarning)
        return generate_keypair(512, allow_insecure=True)


@pytest.fixture(scope="module")
def other_keypair():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyWarning)
        return generate_keypair(512, allow_insecure=True)
