"""``sdzoo push``: publish a weights folder to the Hugging Face Hub (``--dry-run`` only checks it)."""
from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ['add_parser', 'push']


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        'push', help='upload a weights/<model>.<tag> folder to the Hugging Face Hub',
        description='Check a weights folder (config builds the model, weights load strictly, sha256 matches '
                    'the manifest, the card has model-index metrics), then upload it with huggingface_hub. '
                    'HF_ENDPOINT selects another Hub (e.g. `sdzoo mirror --allow-upload`).')
    p.add_argument('folder', type=Path, help='weights folder, e.g. weights/sd_resnet110.sd_cifar10')
    p.add_argument('--repo-id', default=None,
                   help='target repo (default: sdzoo/<folder name>, the id the pretrained cfgs download from)')
    p.add_argument('--dry-run', action='store_true', help='only check the folder and say what would be uploaded')
    p.add_argument('--private', action='store_true', help='create the repo as private')
    p.add_argument('--token', default=None, help='Hub token (default: HF_TOKEN or the saved login)')
    p.add_argument('--revision', default=None, help='branch to commit to (default: main)')
    p.add_argument('--commit-message', default=None, help='commit message (default: "Add <model>.<tag>")')
    p.add_argument('--manifest', type=Path, default=None,
                   help='manifest to check the sha256 against (default: $SDZOO_MANIFEST or the package manifest)')
    p.set_defaults(func=push)


def push(args: argparse.Namespace) -> int:
    from .publish import validate_weights_folder
    from .weights import manifest_path
    folder: Path = args.folder
    if not folder.is_dir():
        raise FileNotFoundError(f'{folder} is not a weights folder (expected weights/<model>.<tag>/)')
    repo_id = args.repo_id or f'sdzoo/{folder.name}'
    if repo_id.count('/') != 1 or not all(repo_id.split('/')):
        raise ValueError(f'--repo-id must be <owner>/<name>, got {repo_id!r}')
    mpath = args.manifest or manifest_path()
    print(f'checking {folder} (manifest {mpath})')
    report = validate_weights_folder(folder, manifest_path=mpath)
    print('\n'.join(report.lines()))
    report.raise_on_failure()
    if repo_id.split('/')[1] != folder.name:
        print(f'note: repo name {repo_id.split("/")[1]} differs from {folder.name}; '
              f"timm.create_model('{folder.name}', pretrained=True) downloads sdzoo/{folder.name}")

    from huggingface_hub import HfApi, constants
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith('.'))
    total = sum(p.stat().st_size for p in files)
    where = f'{constants.ENDPOINT}/{repo_id}' + (f' (revision {args.revision})' if args.revision else '')
    listing = ', '.join(p.name for p in files)
    if args.dry_run:
        print(f'dry run: all checks passed; would upload {len(files)} files ({total} bytes: {listing}) '
              f'to {where}{" as a private repo" if args.private else ""}')
        return 0
    api = HfApi(token=args.token, library_name='sdzoo')
    try:
        repo_url = api.create_repo(repo_id, private=args.private, exist_ok=True)
        info = api.upload_folder(
            repo_id=repo_url.repo_id, folder_path=folder, revision=args.revision,
            commit_message=args.commit_message or f'Add {folder.name}', allow_patterns=[p.name for p in files])
    except Exception as e:  # auth, network, server errors from huggingface_hub: one clean line
        detail = ' '.join(str(e).split()) or type(e).__name__
        raise RuntimeError(f'uploading {folder} to {where} failed: {type(e).__name__}: {detail}') from e
    print(f'uploaded {len(files)} files ({total} bytes: {listing}) to {where}\ncommit: {info.commit_url}')
    return 0
