"""``sdzoo demo``: the mission in one command.

Creates ``sd_resnet110`` through timm (pretrained weights when shipped), shows its survival schedule,
shows that a training step really skips dropped blocks, classifies real CIFAR-10 test images, then
folds the survival scaling into the weights, exports ONNX and checks onnxruntime against PyTorch.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def run_demo(model_name: str = 'sd_resnet110', images: int = 8, export: bool = True) -> int:
    import timm
    import torch
    import sdzoo
    from .data import default_data_root
    from .info import model_info

    from .hub.weights import find_weights_folder
    tags = timm.list_pretrained(model_name + '.*')
    shipped = [t for t in tags if find_weights_folder(t) is not None]
    if shipped:
        print(f"== timm.create_model('{model_name}', pretrained=True)")
        model = timm.create_model(shipped[0], pretrained=True)
        print(f'   loaded the shipped weights {shipped[0]} (offline)')
    else:
        # no shipped copy: say so instead of waiting on Hub retries on an offline machine
        print(f"== timm.create_model('{model_name}')  (no shipped weights for {model_name} yet; "
              f"`timm.create_model('{model_name}', pretrained=True)` would try the Hugging Face Hub; "
              f"shipped: {', '.join(t for t in timm.list_pretrained('sd_*') if find_weights_folder(t)) or 'none'})")
        model = timm.create_model(model_name)
    info = model_info(model_name, flops=False)
    probs = info['survival_probs']
    print(f"   {info['params']:,} params, {info['droppable_blocks']} droppable residual blocks, "
          f"p_1={probs[0]:.3f} … p_L={probs[-1]:.3f}, expected depth {info['expected_depth_fraction']:.3f}")

    print('== one training step in batch mode: dropped blocks are not computed')
    units = sdzoo.sd_modules(model)
    model.train()
    x = torch.randn(32, *model.pretrained_cfg['input_size'])
    calls = {'n': 0}
    hooks = [u_block.register_forward_hook(lambda *a: calls.__setitem__('n', calls['n'] + 1))
             for u_block in model.modules() if isinstance(u_block, torch.nn.Conv2d)]
    t = time.perf_counter()
    model(x).sum().backward()
    dt = time.perf_counter() - t
    for h in hooks:
        h.remove()
    kept = sum(bool(u.last_kept) for u in units)
    n_conv = sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    print(f'   this step ran {kept}/{len(units)} blocks: {calls["n"]}/{n_conv} convolutions executed ({dt:.2f}s)')
    model.zero_grad(set_to_none=True)
    model.eval()

    root = default_data_root() / 'cifar10' / 'test'
    if root.is_dir():
        from PIL import Image
        from timm.data import create_transform, resolve_data_config
        tf = create_transform(**resolve_data_config(model=model))
        classes = sorted(d.name for d in root.iterdir() if d.is_dir())
        files = [sorted((root / c).glob('*.jpg'))[0] for c in classes][:images]
        batch = torch.stack([tf(Image.open(f).convert('RGB')) for f in files])
        with torch.no_grad():
            probs_out = model(batch).softmax(-1)
        print(f'== classifying {len(files)} CIFAR-10 test images (JPEG q75 copy) at full depth')
        for f, p in zip(files, probs_out):
            conf, idx = p.max(0)
            print(f'   {f.parent.name + "/" + f.name:24s} -> {classes[idx]:10s} {100 * conf:5.1f}%')
    else:
        print(f'== (CIFAR-10 not found at {root}: set SDZOO_DATA to show real predictions)')

    if export:
        print('== fold survival scaling into the weights, export ONNX, check onnxruntime against PyTorch')
        with tempfile.TemporaryDirectory() as d:
            out = Path(d) / f'{model_name}.onnx'
            report = sdzoo.export_onnx(model, out, write_report=False)
            r = report['parity']['random']
            ops = ', '.join(f'{k} {v}' for k, v in report['op_histogram'].items())
            print(f"   {out.name}: {out.stat().st_size / 1e6:.1f} MB; ops: {ops}")
            print(f"   onnxruntime vs PyTorch on {r['n']} random images: max |diff| {r['max_abs_diff']:.2e} "
                  f"(relative {r['rel_max_diff']:.1e}), top-1 agreement {100 * r['top1_agreement']:.0f}%")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    return run_demo(args.model, export=not args.no_export)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser('demo', help='create sd_resnet110, show stochastic depth at work, export and check ONNX')
    p.add_argument('--model', default='sd_resnet110', help='the sd_* model to demonstrate')
    p.add_argument('--no-export', action='store_true', help='skip the ONNX export and check')
    p.set_defaults(func=_cmd_demo)
