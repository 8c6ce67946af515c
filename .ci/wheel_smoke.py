"""Smoke test of an installed sdzoo wheel, run by .ci/run inside a fresh venv, from a folder outside the clone.

It proves the wheel carries what a user needs: the package and its shipped weights come from the venv (not the
clone), a pretrained model loads with the Hub switched off, and the installed `sdzoo` command exports and
predicts. (torch and the other dependencies come from the system site: the venv is made with
--system-site-packages, so this does not prove that pip resolves them.)
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def main() -> int:
    venv = Path(sys.prefix).resolve()
    clone = Path(sys.argv[1]).resolve()
    os.environ['HF_HUB_OFFLINE'] = '1'
    import sdzoo
    import timm
    from sdzoo.hub.weights import find_weights_folder
    pkg = Path(sdzoo.__file__).resolve()
    assert pkg.is_relative_to(venv) and not pkg.is_relative_to(clone), f'sdzoo imported from {pkg}, not the venv'
    folder = find_weights_folder('sd_resnet20.sd_cifar10')
    assert folder is not None and folder.resolve().is_relative_to(venv), f'weights found at {folder}'
    model = timm.create_model('sd_resnet20', pretrained=True).eval()
    assert model.num_classes == 10 and model.pretrained_cfg['tag'] == 'sd_cifar10'
    print(f'sdzoo {sdzoo.__version__} from {pkg.parent}; shipped weights {folder}')

    exe = str(Path(sys.executable).with_name('sdzoo'))
    with tempfile.TemporaryDirectory() as tmp:
        onnx_file = Path(tmp) / 'r20.onnx'
        subprocess.run([exe, 'export', 'sd_resnet20', '--pretrained', '--out', str(onnx_file)], check=True, cwd=tmp)
        from PIL import Image
        image = Path(tmp) / 'img.png'
        Image.new('RGB', (32, 32), (200, 30, 30)).save(image)
        out = subprocess.run([exe, 'predict', str(onnx_file), str(image), '--top-k', '3', '--json'], check=True,
                             cwd=tmp, capture_output=True, text=True).stdout
        top = json.loads(out)['predictions'][0]['top_k']
        assert len(top) == 3 and top[0]['label'] in json.loads((folder / 'config.json').read_text())['label_names']
    print('wheel smoke test passed: offline pretrained load, export, predict')
    return 0


if __name__ == '__main__':
    sys.exit(main())
