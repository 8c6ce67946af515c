"""Moved: the run-model writer is ``sdzoo.train.run_model`` (the trainer is its user); folder lookup is
``sdzoo.hub.model_folder``. This alias warns and goes in sdzoo 0.3.0."""
from ..compat import moved_names

__getattr__ = moved_names(__name__, {'run_tag': 'sdzoo.train.run_model', 'write_run_model': 'sdzoo.train.run_model',
                                     'MODEL_DIR': 'sdzoo.hub.model_folder',
                                     'find_model_folder': 'sdzoo.hub.model_folder',
                                     'local_dir_name': 'sdzoo.hub.model_folder'})
