"""What users rely on (issue 48): every shipped weight loads and scores what its validate.json says, image by image
on 1,000 test images (every 10th); README's and MODEL_CARDS.md's accuracy tables are those files; the training queue's
commands are valid `sdzoo train` invocations."""
from __future__ import annotations

import json
import math
import re
import shlex
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = sorted(p.parent for p in (REPO / 'weights').glob('*/validate.json'))
IMAGES = 1000


def _record(folder: Path) -> dict:
    return json.loads((folder / 'validate.json').read_text())


def test_every_weight_folder_has_a_validate_record():
    names = {p.name for p in WEIGHTS}
    assert {'sd_resnet110.sd_cifar10', 'sd_resnet56.sd_cifar10', 'sd_resnet20.sd_cifar10',
            'sd_vit_lite_patch4_32.sd_cifar10', 'sd_resnet20.sd_cifar10_ft_fashion_mnist'} <= names
    assert names == {p.name for p in (REPO / 'weights').iterdir() if (p / 'model.safetensors').is_file()}


@pytest.mark.parametrize('folder', WEIGHTS, ids=[p.name for p in WEIGHTS])
def test_shipped_weight_scores_its_own_validate_record(folder: Path, cifar_root):
    import torch
    from timm.data import resolve_data_config
    from sdzoo.data import create_loader, load_splits
    from sdzoo.models.load import create_model, data_config
    from sdzoo.train.records import decode_correct
    from sdzoo.train.trainer import evaluate
    record = _record(folder)
    model = create_model(folder.name, pretrained=True)
    data_cfg = resolve_data_config(model=model)
    data_cfg['input_size'] = tuple(data_config(model)['input_size'])
    splits = load_splits(record['data'], data_cfg['input_size'], val_size=0, only='test')
    # every 10th image: the test folders list one class after another, so the first 1,000 are all one class
    idx = np.arange(0, len(splits.test), len(splits.test) // IMAGES)[:IMAGES]
    loader = create_loader(splits.test.subset(idx), 250, data_cfg, train=False, in_chans=data_cfg['input_size'][0],
                           workers=0)
    with torch.no_grad():
        res = evaluate(model, loader, torch.device('cpu'), per_image=True)
    hits = np.asarray(res['correct'])
    reference = decode_correct(record['per_image'])[idx]
    assert len(hits) == IMAGES
    # the same images, the same answers: at most a few flips from floating-point order
    assert int((hits != reference).sum()) <= 3, f'{int((hits != reference).sum())} of {IMAGES} images differ'
    # and the 1,000-image accuracy lies within the binomial noise of the recorded 10,000-image top-1
    p = record['top1'] / 100
    assert abs(hits.mean() - p) <= 4 * math.sqrt(p * (1 - p) / IMAGES)


def _table_values(text: str) -> dict:
    """``{weight: first number after it}`` from markdown table rows that start with a `weight` cell."""
    out = {}
    for line in text.splitlines():
        m = re.match(r'\|\s*`([a-z0-9_]+\.[a-z0-9_]+)`\s*\|[^|]*\|\s*([0-9.]+)\s*\|', line)
        if m and m.group(1) not in out:
            out[m.group(1)] = float(m.group(2))
    return out


@pytest.mark.parametrize('doc', ['README.md', 'MODEL_CARDS.md'])
def test_accuracy_tables_are_the_validate_records(doc: str):
    shown = _table_values((REPO / doc).read_text())
    recorded = {p.name: _record(p)['top1'] for p in WEIGHTS}
    assert set(shown) & set(recorded), f'no accuracy table rows found in {doc}'
    for name, value in shown.items():
        if name in recorded:
            assert value == pytest.approx(recorded[name], abs=0.005), f'{doc}: {name} shows {value}'


def test_queue_commands_parse_as_sdzoo_train():
    from sdzoo.cli import build_parser
    text = (REPO / 'runs' / 'queue.sh').read_text()
    block = text[text.index('ENTRIES=('):text.index('\n)', text.index('ENTRIES=('))]
    entries = [shlex.split(line.strip().strip('"')) for line in block.splitlines()[1:] if line.strip().startswith('"')]
    assert len(entries) >= 8
    parser = build_parser()
    for words in entries:
        run_dir, args = words[0], words[1:]
        argv = ['train', *args, '--out', run_dir] if args else ['train', '--resume', run_dir]
        parsed = parser.parse_args(argv)  # argparse exits (SystemExit) on anything the trainer would refuse
        assert parsed.command == 'train'
