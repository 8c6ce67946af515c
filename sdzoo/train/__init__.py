"""Training, fine-tuning and evaluation (API behind ``sdzoo train/finetune/validate``).

Imported lazily (torch), so that ``sdzoo train --help`` answers without it.
"""
_LAZY = {
    'TrainConfig': 'trainer', 'Trainer': 'trainer', 'TrainingInterrupted': 'trainer', 'evaluate': 'trainer',
    'lr_at': 'trainer', 'recipe': 'trainer',
    'atomic_save': 'checkpoint', 'load_checkpoint': 'checkpoint', 'load_state_dict_file': 'checkpoint',
    'save_safetensors': 'checkpoint',
}
__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f'{__name__}.{_LAZY[name]}'), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
