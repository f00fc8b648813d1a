"""Paillier encryption for torchhefl: keys, fixed-point and packed encodings, encrypted tensors and
state dicts, and the wire format. Stands alone: imports neither torchhefl.nn nor torchhefl.federated."""

from torchhefl.secure.encoding import DEFAULT_PLAIN_BITS, DEFAULT_SCALE
from torchhefl.secure.keys import (
    DEFAULT_KEY_BITS,
    InsecureKeyWarning,
    PrivateKey,
    PublicKey,
    generate_keypair,
    load_private_key,
    load_public_key,
)
from torchhefl.secure.packed_sum import PackedSum
from torchhefl.secure.packing import MAX_TOTAL_WEIGHT
from torchhefl.secure.state_dict import SecureStateDict
from torchhefl.secure.tensor import EncryptedTensor

__all__ = [
    "DEFAULT_KEY_BITS",
    "DEFAULT_PLAIN_BITS",
    "DEFAULT_SCALE",
    "MAX_TOTAL_WEIGHT",
    "EncryptedTensor",
    "InsecureKeyWarning",
    "PackedSum",
    "PrivateKey",
    "PublicKey",
    "SecureStateDict",
    "generate_keypair",
    "load_private_key",
    "load_public_key",
]
