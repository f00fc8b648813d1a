"""Paillier encryption for torchhefl: keys, fixed-point and packed encodings, encrypted tensors and
state dicts, and the wire format. Stands alone: imports neither torchhefl.nn nor torchhefl.federated."""

from torchhefl.secure.encoding import (
    DEFAULT_PLAIN_BITS,
    DEFAULT_SCALE,
    PACKED_SUM_FIXED_POINT,
    STATE_DICT_FIXED_POINT,
    TENSOR_FIXED_POINT,
    FixedPoint,
)
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
    "PACKED_SUM_FIXED_POINT",
    "STATE_DICT_FIXED_POINT",
    "TENSOR_FIXED_POINT",
    "EncryptedTensor",
    "FixedPoint",
    "InsecureKeyWarning",
    "PackedSum",
    "PrivateKey",
    "PublicKey",
    "SecureStateDict",
    "generate_keypair",
    "load_private_key",
    "load_public_key",
]
