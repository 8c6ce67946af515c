"""Issue 45's research fine-tuner: the hand grids behind benchmarks/results/finetune.md's grid columns.

It mirrors `sdzoo finetune` (same data loading, normalisation, pad-4 crop + flip, SGD Nesterov 0.9, wd 1e-4,
cosine with warm-up) with knobs the CLI lacks (head init, BN freezing, linear-probe-then-fine-tune, folded SD
rates, weight-space interpolation `wise`). Run from the folder that holds the benchmark's data folders
(`python benchmarks/finetune.py` builds them in /tmp/sdzoo-ftbench/data):

    cd /tmp/sdzoo-ftbench/data && python /path/to/benchmarks/finetune_grid.py JOBS.jsonl OUT.jsonl

one job dict per line, e.g. {"data": "readme", "bs": 16, "drop_last": false, "epochs": 3, "head": "known",
"lr": 0.001, "seed": 0, "balance": true}. Jobs and results: benchmarks/results/finetune_grid/.
"""
import json, math, os, sys, time, copy
import torch, torch.nn as nn, torch.nn.functional as F
torch.set_num_threads(1)
import sdzoo, timm
from timm.data import resolve_data_config
from sdzoo.data import load_splits
from sdzoo.data.loader import TensorLoader
from sdzoo.layers import sd_modules, survival_schedule
from sdzoo.export.fold import fold

_SPLITS = {}


def get_splits(folder, input_size, val_size):
    key = (folder, input_size, val_size)
    if key not in _SPLITS:
        _SPLITS[key] = load_splits(folder, input_size, val_size)
    return _SPLITS[key]


def build(model_name, seed, k, classes, head='reset', dpr='keep', in_chans=3):
    torch.manual_seed(seed)
    kw = dict(sd_seed=seed) if model_name.startswith('sd_') else {}
    m = timm.create_model(model_name, pretrained=True, in_chans=in_chans, **kw)
    names = list(m.pretrained_cfg.get('label_names') or [])
    old = copy.deepcopy(m.get_classifier())
    m.reset_classifier(k)
    fc = m.get_classifier()
    if head in ('known', 'known_zero'):
        with torch.no_grad():
            if head == 'known_zero':
                fc.weight.zero_(); fc.bias.zero_()
            for i, c in enumerate(classes):
                if c in names:
                    j = names.index(c)
                    fc.weight[i] = old.weight[j]; fc.bias[i] = old.bias[j]
    if dpr != 'keep':
        m.eval()
        fold(m, inplace=True)
        units = sd_modules(m)
        probs = survival_schedule(len(units), float(dpr), 'linear') if len(units) else []
        for u, p in zip(units, probs):
            u.survival_prob = float(p)
            u.scaling = 'inverted'
        m.train()
    return m, names


@torch.no_grad()
def evaluate(m, split, mean, std, bs=256):
    m.eval()
    ld = TensorLoader(split, bs, mean, std, train=False, channels_last=True)
    hit = n = 0
    for x, y in ld.iter_epoch(0):
        hit += (m(x).argmax(1) == y).sum().item(); n += y.numel()
    return 100.0 * hit / n


@torch.no_grad()
def features(m, split, mean, std):
    m.eval()
    ld = TensorLoader(split, 256, mean, std, train=False, channels_last=True)
    fs, ys = [], []
    for x, y in ld.iter_epoch(0):
        fs.append(m.forward_head(m.forward_features(x), pre_logits=True)); ys.append(y)
    return torch.cat(fs), torch.cat(ys)


def fit_linear(f, y, k, l2=1e-3, iters=200, balance=False):
    """Multinomial logistic regression on frozen features (LBFGS); returns (W, b)."""
    cnt = torch.bincount(y, minlength=k).float()
    cw = cnt.sum() / (k * cnt) if balance else None
    W = torch.zeros(k, f.shape[1], requires_grad=True); b = torch.zeros(k, requires_grad=True)
    opt = torch.optim.LBFGS([W, b], lr=1, max_iter=iters, line_search_fn='strong_wolfe')
    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(f @ W.T + b, y, weight=cw) + l2 * (W ** 2).sum()
        loss.backward(); return loss
    opt.step(closure)
    return W.detach(), b.detach()


def run(job):
    t0 = time.time()
    model_name = job.get('model', 'sd_resnet20')
    seed = job.get('seed', 0)
    folder = job['data']
    dc = resolve_data_config(model=timm.create_model(model_name, pretrained=False))
    mean, std = dc['mean'], dc['std']
    val_size = job.get('val_size', None)   # None: the CLI's 10% class-balanced holdout
    in_chans = job.get('in_chans', 3)
    sp = get_splits(folder, (in_chans,) + tuple(dc['input_size'][1:]), val_size)
    train, test, classes, k = sp.train, sp.test, sp.classes, sp.num_classes
    out = dict(job, n_train=len(train), n_test=len(test))
    kind = job.get('kind', 'ft')
    if kind == 'zeroshot':
        m = timm.create_model(model_name, pretrained=True).eval()
        names = list(m.pretrained_cfg.get('label_names') or ('airplane','automobile','bird','cat','deer','dog','frog','horse','ship','truck'))
        idx = [names.index(c) for c in classes]
        ld = TensorLoader(test, 256, mean, std, train=False, channels_last=True)
        hit = n = 0
        with torch.no_grad():
            for x, y in ld.iter_epoch(0):
                hit += (m(x)[:, idx].argmax(1) == y).sum().item(); n += y.numel()
        out.update(top1=100.0 * hit / n, seconds=time.time() - t0)
        return out
    m, names = build(model_name, seed, k, classes, job.get('head', 'reset'), job.get('dpr', 'keep'), in_chans)
    if job.get('channels_last', True):
        m.to(memory_format=torch.channels_last)
    fc = m.get_classifier()
    if kind == 'lp' or job.get('lpft'):
        f, y = features(m, train, mean, std)
        W, b = fit_linear(f, y, k, job.get('lp_l2', 1e-3), balance=job.get('balance', False))
        with torch.no_grad():
            fc.weight.copy_(W); fc.bias.copy_(b)
        if kind == 'lp':
            out.update(top1=evaluate(m, test, mean, std), seconds=time.time() - t0)
            return out
    bs = job.get('bs', 128)
    drop_last = job.get('drop_last', True)
    ld = TensorLoader(train, bs, mean, std, train=True, pad=4, flip=True, seed=seed, drop_last=drop_last,
                      channels_last=True)
    spe = len(ld)
    if spe == 0:
        out.update(top1=float('nan'), note='no full batch'); return out
    epochs = job.get('epochs', 10)
    if job.get('min_steps'):      # epochs sized so that total steps >= min_steps
        epochs = max(epochs, math.ceil(job['min_steps'] / spe))
    total = epochs * spe
    warm = job.get('warmup_steps')
    if warm is None:
        warm = int(round(job.get('warmup_epochs', 0.5) * spe))
    lr = job.get('lr', 0.01)
    head_lr_mult = job.get('head_lr_mult', 1.0)
    head_params = list(fc.parameters())
    hp = {id(p) for p in head_params}
    body = [p for p in m.parameters() if id(p) not in hp]
    groups = [dict(params=body, mult=1.0), dict(params=head_params, mult=head_lr_mult)]
    opt = torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True, weight_decay=job.get('wd', 1e-4))
    freeze_bn = job.get('freeze_bn', False)
    ls = job.get('smoothing', 0.0)
    cw = None
    if job.get('balance'):
        cnt = torch.bincount(train.labels, minlength=k).float()
        cw = cnt.sum() / (k * cnt)
    step = 0
    init_sd = {k: v.detach().clone() for k, v in m.state_dict().items()}
    m.train()
    for ep in range(epochs):
        m.train()
        if freeze_bn:
            for mod in m.modules():
                if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                    mod.eval()
        for x, y in ld.iter_epoch(ep):
            if step < warm:
                cur = lr * (step + 1) / warm
            else:
                t = (step - warm) / max(1, total - warm)
                cur = 0.5 * lr * (1 + math.cos(math.pi * min(1.0, t)))
            for g in opt.param_groups:
                g['lr'] = cur * g['mult']
            loss = F.cross_entropy(m(x), y, weight=cw, label_smoothing=ls)
            opt.zero_grad(set_to_none=False)
            loss.backward()
            opt.step()
            step += 1
        if job.get('log'):
            print(f'epoch {ep+1}/{epochs} lr {cur:.4g} loss {loss.item():.4f} test {evaluate(m, test, mean, std):.2f} '
                  f'{time.time()-t0:.0f}s', flush=True)
            m.train()
    for a in job.get('wise', []):
        ft_sd = {k: v.detach().clone() for k, v in m.state_dict().items()}
        mix = {k: (a * ft_sd[k] + (1 - a) * init_sd[k]) if ft_sd[k].is_floating_point() else ft_sd[k] for k in ft_sd}
        m.load_state_dict(mix)
        out[f'wise{a}'] = evaluate(m, test, mean, std)
        m.load_state_dict(ft_sd)
    out.update(top1=evaluate(m, test, mean, std), steps=total, epochs_run=epochs, spe=spe,
               seconds=time.time() - t0, final_loss=loss.item())
    return out


if __name__ == '__main__':
    jobs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
    done = set()
    if os.path.exists(sys.argv[2]):
        for l in open(sys.argv[2]):
            r = json.loads(l); done.add(json.dumps({k: r[k] for k in r if k in r.get('_keys', [])}, sort_keys=True))
    for j in jobs:
        j['_keys'] = sorted(j)
        key = json.dumps({k: j[k] for k in j if k in j['_keys']}, sort_keys=True)
        if key in done:
            continue
        r = run(j)
        print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items() if k != '_keys'}), flush=True)
        with open(sys.argv[2], 'a') as f:
            f.write(json.dumps(r) + '\n')
