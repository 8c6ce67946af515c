"""Data sets and resumable loaders for training and evaluation."""
from .sources import (DATA_ENV, DataSplits, Split, default_data_root, find_fashion_mnist, load_splits,
                      resolution_note)
from .loader import StreamLoader, TensorLoader, batch_bounds, create_loader, epoch_order
