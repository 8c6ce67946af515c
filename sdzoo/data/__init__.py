"""Data sets and resumable loaders for training and evaluation."""
from .sources import DATA_ENV, DataSplits, Split, default_data_root, find_fashion_mnist, load_splits
from .loader import StreamLoader, TensorLoader, create_loader, epoch_order
