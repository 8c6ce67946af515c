"""Deployment: survival folding, ONNX export with built-in validation, INT8 quantization, Triton model repositories.

Everything is imported when first used (``sdzoo export --help`` needs no torch); the ONNX pieces (``export_onnx``, ``validate_onnx``, ``write_triton_model``)
import onnx / onnxruntime only when first used.
"""
DEFAULT_OPSET = 20  # onnxruntime >= 1.17, TensorRT 10; carries Gelu and LayerNormalization as single ops

__all__ = ['fold', 'fold_batchnorm', 'is_folded', 'timm_equivalent', 'to_timm', 'export_onnx', 'validate_onnx',
           'write_triton_model', 'quantize_onnx']

_LAZY = {
    **{name: ('sdzoo.export.fold', name) for name in ('fold', 'fold_batchnorm', 'is_folded', 'timm_equivalent',
                                                      'to_timm')},
    'export_onnx': ('sdzoo.export.onnx', 'export_onnx'),
    'validate_onnx': ('sdzoo.export.validate', 'validate_onnx'),
    'write_triton_model': ('sdzoo.export.triton', 'write_triton_model'),
    'quantize_onnx': ('sdzoo.export.quantize', 'quantize_onnx'),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
