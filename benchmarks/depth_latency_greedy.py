"""Research (issue 50): greedy block removal ranked by KL increase per microsecond saved, instead of per block.

onnxruntime's profile of the INT8 sd_resnet110.sd_cifar10 graph (Intel Xeon AMX, family 6 model 207, 1 thread,
batch 1; ``python benchmarks/ort_profile.py FP32 INT8 --by-shape``, benchmarks/results/ort_profile_r110_shapes_amx207.md,
which a second profile reproduced within 2%) puts an INT8 residual block at 32x32x16 at about 47 us, at 16x16x32 at
28.7 us and at 8x8x64 at 25.0 us (two QLinearConv + one QLinearAdd each), so removing a first-stage block saves nearly
twice as much. This script
chooses ``--keep`` blocks with ``sdzoo.models.depth.greedy_order(..., saving=STAGE_US)`` on the same 500 held-out
training images ``prune_depth`` uses, then does what ``sdzoo export --keep-blocks N --int8 --data cifar10`` does after
choosing (BatchNorm re-estimation, 300 heal steps, ONNX export, INT8 with its accuracy gate) and writes the pair into
``--repository`` for ``benchmarks/depth.py --phase latency --repository`` to time beside the export's own graphs:

    python benchmarks/depth_latency_greedy.py --keep 36 --repository /tmp/latg/repo
    # then link the export's entries and these two into one directory and:
    python benchmarks/depth.py --phase latency --threads 1 2 --repository DIR --work /tmp/latg/work --no-report

Results: benchmarks/results/depth_latency_greedy.md.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

STAGE_US = {'layer1': 47.0, 'layer2': 28.7, 'layer3': 25.0}  # INT8, Xeon model 207, 1 thread (see the docstring)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--keep', type=int, default=36)
    p.add_argument('--repository', required=True, help='where sd_resnet110_k{keep}lat[_int8] are written')
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--max-accuracy-drop', type=float, default=1.5, help='the INT8 gate (the issue allows 1.5 at 36)')
    args = p.parse_args(argv)
    import timm
    import torch
    import sdzoo
    from sdzoo.export.quantize import quantize_onnx
    from sdzoo.models.depth import residual_blocks
    torch.set_num_threads(args.threads)
    model = timm.create_model('sd_resnet110.sd_cifar10', pretrained=True).eval()
    saving = {b.name: STAGE_US[b.name.split('.')[0]] for b in residual_blocks(model)}
    # what sdzoo export --keep-blocks does (greedy on 500 held-out images, BN, 300 heal steps), ranked per us saved
    pruned = sdzoo.prune_depth(model, args.keep, data='cifar10', saving=saving, log=print)
    order = pruned.pretrained_cfg['depth']['removed_blocks']
    name = f'sd_resnet110_k{args.keep}lat'
    fp32 = Path(args.repository) / name / '1' / 'model.onnx'
    int8 = Path(args.repository) / f'{name}_int8' / '1' / 'model.onnx'
    for f in (fp32, int8):
        f.parent.mkdir(parents=True, exist_ok=True)
    sdzoo.export_onnx(pruned, fp32, model_name='sd_resnet110', tag='sd_cifar10', write_report=False)
    report = quantize_onnx(fp32, int8, data='cifar10', max_accuracy_drop=args.max_accuracy_drop, write_report=False)
    print(json.dumps(dict(removed_in_block_order=order, per_stage={s: sum(n.startswith(s) for n in order) for s in STAGE_US},
                          int8_gate=report['accuracy'])))
    return 0


if __name__ == '__main__':
    sys.exit(main())
