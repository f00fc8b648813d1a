"""Data for torchhefl: loaders (WDBC, digits, CSV), the stratified split, client partitions and federated
standardisation. Plain NumPy; nothing here imports torch or the cryptographic layer."""

from torchhefl.data.dataset import Dataset, train_test_split
from torchhefl.data.loaders import load_csv, load_digits, load_wdbc
from torchhefl.data.partition import partition_dirichlet, partition_iid
from torchhefl.data.standardize import Moments, Standardizer, local_moments, sum_moments

__all__ = [
    "Dataset",
    "Moments",
    "Standardizer",
    "load_csv",
    "load_digits",
    "load_wdbc",
    "local_moments",
    "partition_dirichlet",
    "partition_iid",
    "sum_moments",
    "train_test_split",
]
