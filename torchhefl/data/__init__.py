"""Data for torchhefl: loaders (WDBC, digits, CSV), the stratified split, client partitions, the federated
encoding of a user's table (identifiers, one-hot vocabulary, imputation) and federated
standardisation. Plain NumPy; nothing here imports torch or the cryptographic layer."""

from torchhefl.data.dataset import Dataset, train_test_split
from torchhefl.data.encoding import (
    IMPUTE,
    MEDIAN_BINS,
    TableEncoder,
    TableSummary,
    agree_encoding,
    agree_vocabulary,
    local_histogram,
    local_summary,
    median_from_histogram,
)
from torchhefl.data.loaders import load_csv, load_digits, load_wdbc
from torchhefl.data.partition import partition_dirichlet, partition_iid
from torchhefl.data.standardize import Moments, Standardizer, local_moments, sum_moments
from torchhefl.data.table import IdentifierColumnWarning, Table, identifier_columns, load_table

__all__ = [
    "Dataset",
    "IMPUTE",
    "IdentifierColumnWarning",
    "MEDIAN_BINS",
    "Moments",
    "Standardizer",
    "Table",
    "TableEncoder",
    "TableSummary",
    "agree_encoding",
    "agree_vocabulary",
    "identifier_columns",
    "load_csv",
    "load_table",
    "load_digits",
    "load_wdbc",
    "local_histogram",
    "local_moments",
    "local_summary",
    "median_from_histogram",
    "partition_dirichlet",
    "partition_iid",
    "sum_moments",
    "train_test_split",
]
