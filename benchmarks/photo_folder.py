"""Fine-tuning on a folder of photos: is the model trained and measured on the pixels it is served? (issue 45)

A user's folder holds pictures of many sizes and shapes. sdzoo used to squash them to the model's input size for
training and for ``sdzoo validate`` (and refused them for INT8 calibration), while ``sdzoo predict`` and
``sdzoo serve`` keep the aspect ratio and crop the middle (timm's eval transform with the model's ``crop_pct``).
This benchmark builds photo folders from the fine-tune benchmark's 32x32 folders (each picture scaled up to the
shorter edge of a non-square canvas of one of four sizes, on its own border colour, saved as .JPG, RGBA .png,
grayscale .jpeg or CMYK .jpg in turn), runs the README's command without recipe flags on each with two checkouts
of sdzoo (``--arm NAME=CHECKOUT``: the code before the fix and after it), exports every run to ONNX with the same
checkout and scores the exported model on the test pictures through that checkout's ``sdzoo predict`` (what its
``sdzoo serve`` answers; the cells before 2026-12-07 19:45 scored through the current ``sdzoo.runtime``, whose crop
the two arms of those cells share). ``--phone`` stores portrait pictures sideways with an EXIF orientation tag.
The 32x32 source folders are benchmarks/finetune.py's (built here when missing, same files). Reported per folder
and arm: the run's own test figure, the served figure, and the arms paired image by image on the served answers
(exact McNemar over all seeds' test pictures).

    git worktree add /tmp/sdzoo-before COMMIT_BEFORE_THE_FIX
    python benchmarks/photo_folder.py --work /tmp/photos --source /tmp/sdzoo-ftbench/data \\
        --folders readme f3x125 f5x50 --seeds 0 1 2 --arm before=/tmp/sdzoo-before --arm after=. \\
        --out benchmarks/results/photo_folder.jsonl
    python benchmarks/photo_folder.py --model sd_resnet110 --folders f5x50 --seeds 0 --arm ... --out ...
    python benchmarks/photo_folder.py --phone --folders f5x50 readme --seeds 0 1 2 \\
        --arm crop-only=/tmp/sdzoo-after --arm upright=. --out benchmarks/results/photo_folder.jsonl
    python benchmarks/photo_folder.py --report benchmarks/results/photo_folder.jsonl \\
        > benchmarks/results/photo_folder.md
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

CANVASES = ((60, 45), (45, 60), (64, 36), (80, 60))  # (width, height): landscape, portrait, 16:9, 4:3
SUFFIXES = ('.jpg', '.jpeg', '.png')
CLI = 'import sys; from sdzoo.cli import main; sys.exit(main())'


def photograph(src: Path, dst: Path, index: int, phone: bool = False) -> Path:
    """``src`` scaled up to the shorter edge of canvas ``index % 4``, centred on its mean border colour, saved in
    format ``index % 4`` of .JPG, RGBA .png, grayscale .jpeg, CMYK .jpg (a camera, a screenshot, a scan, print).
    ``phone``: a portrait picture is stored as a phone stores it, a sideways .JPG with EXIF orientation 6."""
    from PIL import Image
    img = Image.open(src).convert('RGB')
    a = np.asarray(img, dtype=np.float64)
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]]).mean(axis=0)
    w, h = CANVASES[index % 4]
    photo = Image.new('RGB', (w, h), tuple(int(round(v)) for v in border))
    side = min(w, h)
    photo.paste(img.resize((side, side), Image.BICUBIC), ((w - side) // 2, (h - side) // 2))
    stem = dst / f'{src.stem}'
    kind = index % 4
    if phone and h > w:
        path = stem.with_suffix('.JPG')
        exif = Image.Exif()
        exif[0x0112] = 6  # "rotate 90 degrees clockwise to view"
        photo.transpose(Image.Transpose.ROTATE_90).save(path, quality=90, exif=exif)
    elif kind == 0:
        path = stem.with_suffix('.JPG')
        photo.save(path, quality=90)
    elif kind == 1:
        path = stem.with_suffix('.png')
        photo.convert('RGBA').save(path)
    elif kind == 2:
        path = stem.with_suffix('.jpeg')
        photo.convert('L').save(path, quality=90)
    else:
        path = stem.with_suffix('.jpg')
        photo.convert('CMYK').save(path, quality=90)
    return path


def photo_folder(source: Path, dst: Path, phone: bool = False) -> Path:
    """``source``'s ``train/`` and ``test/`` class folders as photos (see :func:`photograph`), plus a .DS_Store in
    each class folder; built under a temp name and renamed, so an interrupted build is never mistaken for one."""
    if (dst / 'test').is_dir():
        return dst
    tmp = dst.with_name(f'.{dst.name}.tmp')
    shutil.rmtree(tmp, ignore_errors=True)
    for split in ('train', 'test'):
        for cls in sorted(p for p in (source / split).iterdir() if p.is_dir()):
            out = tmp / split / cls.name
            out.mkdir(parents=True)
            files = sorted(f for f in cls.iterdir() if f.suffix.lower() in SUFFIXES)
            for i, f in enumerate(files):
                photograph(f, out, i, phone)
            (out / '.DS_Store').write_bytes(b'\x00\x01not an image')
    tmp.rename(dst)
    return dst


def sdzoo_cmd(checkout: Path, *args: str) -> Tuple[List[str], Dict[str, str]]:
    """``sdzoo ARGS`` run from ``checkout``'s source tree (PYTHONPATH first, so it wins over the installed one;
    run with ``cwd=checkout``: Python puts the working directory before PYTHONPATH), with a decoded-folder cache of
    its own: versions before the cache key named the decoder would read each other's pixels."""
    env = dict(os.environ, PYTHONPATH=str(checkout.resolve()),
               SDZOO_CACHE=str(Path(os.environ.get('SDZOO_CACHE', '/tmp/sdzoo-bench-cache')) / checkout.name))
    return [sys.executable, '-c', CLI, *args], env


def served_hits(onnx: Path, test_dir: Path, checkout: Path) -> Tuple[np.ndarray, np.ndarray]:
    """Each test picture's top-1 hit from the exported graph through ``sdzoo predict`` of ``checkout`` (what that
    version serves: the same preprocessing as ``sdzoo serve``), and its label (class index in folder order)."""
    files = sorted((f for f in test_dir.rglob('*') if f.suffix.lower() in SUFFIXES),
                   key=lambda f: (f.parent.name, str(f)))
    classes = sorted({f.parent.name for f in files})
    cmd, env = sdzoo_cmd(checkout, 'predict', str(onnx), *map(str, files), '--top-k', '1', '--json', '--threads', '1')
    done = subprocess.run(cmd, env=env, cwd=checkout, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f'sdzoo predict failed: {done.stderr.strip()[-500:]}')
    answers = json.loads(done.stdout)['predictions']
    hits = [a['top_k'][0]['label'] == Path(a['image']).parent.name for a in answers]
    return np.asarray(hits, dtype=bool), np.asarray([classes.index(f.parent.name) for f in files])


def run_cell(folder: Path, name: str, seed: int, arm: str, checkout: Path, work: Path, threads: int,
             model: str = 'sd_resnet20') -> Dict:
    run = work / 'runs' / f'{model}-{name}-{arm}-s{seed}'
    if run.exists():
        raise SystemExit(f'{run} exists: remove it or choose another --work')
    classes = sorted(p.name for p in (folder / 'train').iterdir() if p.is_dir())
    args = ['finetune', model, '--data', str(folder), '--num-classes', str(len(classes)), '--seed', str(seed),
            '--split-seed', str(seed), '--threads', str(threads), '--workers', '0', '--no-progress', '--out', str(run)]
    cmd, env = sdzoo_cmd(checkout, *args)
    t0 = time.time()
    log = run.with_suffix('.log')
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, 'w') as f:
        where = subprocess.run([sys.executable, '-c', 'import sdzoo; print(sdzoo.__file__)'], env=env,
                               capture_output=True, text=True, cwd=checkout).stdout.strip()
        if not where.startswith(str(checkout.resolve())):
            raise SystemExit(f'sdzoo imports from {where}, not from {checkout}')
        if subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, cwd=checkout).returncode:
            raise SystemExit(f'{shlex.join(cmd)} failed; see {log}')
        wall = time.time() - t0
        ecmd, _ = sdzoo_cmd(checkout, 'export', str(run), '--repository', str(run / 'export'), '--threads', '1')
        if subprocess.run(ecmd, env=env, stdout=f, stderr=subprocess.STDOUT, cwd=checkout).returncode:
            raise SystemExit(f'{shlex.join(ecmd)} failed; see {log}')
    onnx = next((run / 'export').glob('*/1/model.onnx'))
    hits, labels = served_hits(onnx, folder / 'test', checkout)
    summary = json.loads((run / 'summary.json').read_text())
    config = json.loads((run / 'config.json').read_text())
    from sdzoo.train.records import encode_per_image
    commit = subprocess.run(['git', '-C', str(checkout), 'rev-parse', '--short', 'HEAD'], capture_output=True,
                            text=True).stdout.strip() or '?'
    return dict(model=model, folder=name, seed=seed, arm=arm, checkout=str(checkout), commit=commit,
                run_top1=summary['test']['top1'], served_top1=round(100 * float(hits.mean()), 4),
                served=encode_per_image(hits, labels), images=len(hits),
                selected=(summary.get('selected') or {}).get('epoch'), epochs=config['epochs'],
                batch_size=config['batch_size'], lr=config['lr'], hardware=summary.get('hardware'),
                train_s=round(wall, 1), command='sdzoo ' + shlex.join(args))


def report(path: Path) -> str:
    from sdzoo.stats import mcnemar_exact_p
    from sdzoo.train.records import decode_correct
    cells = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    arms = list(dict.fromkeys(c['arm'] for c in cells))
    arm_commits = ', '.join(f"{a} {'/'.join(sorted({c.get('commit', '?') for c in cells if c['arm'] == a}))}"
                            for a in arms)
    out = ['# Fine-tuning on a folder of photos (issue 45)', '',
           'The README\'s command without recipe flags (`sdzoo finetune MODEL --data FOLDER --num-classes K`) '
           'on photo versions of three benchmark folders: every 32x32 picture (CIFAR-10 JPEG q75 copy: readme, cat / '
           'dog / ship; Debian Fashion-MNIST: f3x125, f5x50) scaled up to the shorter edge of a 60x45, 45x60, 64x36 or '
           '80x60 canvas on its own border colour and saved as .JPG, RGBA .png, grayscale .jpeg or CMYK .jpg in turn '
           '(`benchmarks/photo_folder.py`). Arms (the sdzoo commit each ran): ' + arm_commits + '. **before** squashed '
           'such pictures to 32x32 for training and `sdzoo validate`; **after** brings them to 32x32 with the '
           'model\'s own crop, as `sdzoo predict` / `serve` always did; **crop-only** / **upright** (the NAME-phone '
           'folders): before and after pictures were turned upright by their EXIF tag. Each run is exported to ONNX '
           'by its own checkout; "served" is the exported model on the test pictures through the arm\'s own '
           '`sdzoo predict` (what its `sdzoo serve` answers; the crop-fix cells used the current `sdzoo.runtime`, '
           'whose crop both their arms share). NAME-phone folders store portrait pictures as phones do: a sideways '
           '.JPG with EXIF orientation 6. 1 thread per run, beside the training queue (1 thread) and at times the '
           'test suite: seconds are indicative, accuracy does not depend on the load.', '',
           'Regenerate: `python benchmarks/photo_folder.py --report benchmarks/results/photo_folder.jsonl > '
           'benchmarks/results/photo_folder.md`', '',
           '| model | folder | arm | run\'s own test top-1 % (mean; per seed) | served top-1 % (mean; per seed) '
           '| served minus run | test pictures |', '|---|---|---|---|---|---:|---:|']
    for c in cells:
        c.setdefault('model', 'sd_resnet20')  # cells from before --model
    duels = []
    for model, name in dict.fromkeys((c['model'], c['folder']) for c in cells):
        by_arm = {a: sorted((c for c in cells if (c['model'], c['folder']) == (model, name) and c['arm'] == a),
                            key=lambda c: c['seed'])
                  for a in arms}
        for a, cs in by_arm.items():
            if not cs:
                continue
            run = [c['run_top1'] for c in cs]
            srv = [c['served_top1'] for c in cs]
            gap = round(float(np.mean(srv) - np.mean(run)), 2) + 0.0  # + 0.0: no '-0.00'
            out.append(f"| {model} | {name} | {a} | {np.mean(run):.2f} ({'/'.join(f'{v:.1f}' for v in run)}) "
                       f"| {np.mean(srv):.2f} ({'/'.join(f'{v:.1f}' for v in srv)}) "
                       f"| {gap:+.2f} | {cs[0]['images']} |")
        present = [a for a in arms if by_arm[a]]  # the two arms run on this folder
        if len(present) == 2:
            first, second = present
            pairs = [(x, y) for x in by_arm[first] for y in by_arm[second] if x['seed'] == y['seed']]
            h0 = np.concatenate([decode_correct(x['served']) for x, _ in pairs])
            h1 = np.concatenate([decode_correct(y['served']) for _, y in pairs])
            a1, a0 = int((h1 & ~h0).sum()), int((h0 & ~h1).sum())
            duels.append(f'- {model} {name}: served answers, {second} against {first} over {len(pairs)} seed(s): '
                         f'{100 * h1.mean():.2f} vs {100 * h0.mean():.2f}; only {second} right {a1}, only '
                         f'{first} right {a0}, exact McNemar p = {mcnemar_exact_p(a1, a0):.2g}')
    hw = sorted({c.get('hardware') or '?' for c in cells})
    text = out + ['', *duels, '', f"Hardware: {'; '.join(hw)}.", '', 'Commands behind the cells (each run from its '
                  "arm's checkout: `PYTHONPATH=CHECKOUT`), then `sdzoo export RUN --repository RUN/export`:", '']
    text += [f"- {c['model']} {c['folder']} {c['arm']} ({c['checkout']}) seed {c['seed']}: `{c['command']}` "
             f"(epochs {c['epochs']}, batch {c['batch_size']}, lr {c['lr']:g}, kept epoch {c['selected']}, "
             f"{c['train_s']:.0f} s)" for c in cells]
    return '\n'.join(text)


def main(argv: List[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--work', type=Path, default=Path('/tmp/sdzoo-photos'))
    ap.add_argument('--source', type=Path, default=Path('/tmp/sdzoo-ftbench/data'),
                    help="folder of 32x32 benchmark folders (benchmarks/finetune.py's, built here when missing)")
    ap.add_argument('--model', default='sd_resnet20')
    ap.add_argument('--phone', action='store_true',
                    help='portrait pictures stored sideways with an EXIF orientation tag, as phones store them '
                         '(folder NAME-phone)')
    ap.add_argument('--folders', nargs='+', default=['readme', 'f3x125', 'f5x50'])
    ap.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2])
    ap.add_argument('--arm', action='append', default=[], metavar='NAME=CHECKOUT',
                    help='a name and an sdzoo source tree to run (repeat; default: after=. only)')
    ap.add_argument('--threads', type=int, default=1)
    ap.add_argument('--out', type=Path, help='JSON-lines results (appended)')
    ap.add_argument('--report', type=Path, help='print the markdown table of this results file and exit')
    args = ap.parse_args(argv)
    if args.report:
        print(report(args.report))
        return 0
    if args.out is None:
        ap.error('--out is required to run cells')
    arms = [tuple(a.split('=', 1)) for a in args.arm or ['after=.']]
    if any(len(a) != 2 or not (Path(a[1]) / 'sdzoo' / 'cli.py').is_file() for a in arms):
        ap.error(f'--arm takes NAME=CHECKOUT with an sdzoo source tree, got {args.arm}')
    arms = [(a, Path(c).resolve()) for a, c in arms]
    args.work, args.source = args.work.resolve(), args.source.resolve()
    if not all((args.source / name / 'test').is_dir() for name in args.folders):
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from finetune import build_folders  # benchmarks/finetune.py: the fine-tune benchmark's folders
        build_folders(args.source)
    for name in args.folders:
        label = f'{name}-phone' if args.phone else name
        folder = photo_folder(args.source / name, args.work / 'data' / f"{name}-{'phone' if args.phone else 'photos'}",
                              args.phone)
        for seed in args.seeds:
            for arm, checkout in arms:
                cell = run_cell(folder, label, seed, arm, checkout, args.work, args.threads, args.model)
                with open(args.out, 'a') as f:
                    f.write(json.dumps(cell) + '\n')
                print(f"{name} seed {seed} {arm}: run {cell['run_top1']:.2f}, served {cell['served_top1']:.2f}",
                      flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
