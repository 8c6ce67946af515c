"""Per-image results of sdzoo validate and the paired test that sets two networks side by side on them."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sdzoo.cli import main as cli_main
from sdzoo.reports.paired import mcnemar_exact_p, paired_comparison
from sdzoo.train.records import decode_correct, encode_per_image


def _validate(model: str, data: Path, out: Path, *extra: str) -> dict:
    assert cli_main(['validate', model, '--pretrained', '--data', str(data), '--out', str(out), '--threads', '1',
                     '--workers', '0', *extra]) == 0
    return json.loads(out.read_text())


def test_validate_records_which_images_each_network_gets_right(tmp_path, tiny_cifar):
    """Shipped sd_resnet20 and sd_resnet56 weights on 60 real CIFAR-10 test JPEGs: the per-image hits add up to
    the reported top-1, do not depend on the batch size (image order is the split's), and pair up."""
    r20 = _validate('sd_resnet20', tiny_cifar, tmp_path / 'r20.json')
    r20_b7 = _validate('sd_resnet20', tiny_cifar, tmp_path / 'r20b7.json', '--batch-size', '7')
    r56 = _validate('sd_resnet56', tiny_cifar, tmp_path / 'r56.json')
    hits20, hits56 = decode_correct(r20['per_image']), decode_correct(r56['per_image'])
    assert hits20.size == r20['images'] == 60
    assert hits20.sum() == round(r20['top1'] * 60 / 100) and hits56.sum() == round(r56['top1'] * 60 / 100)
    assert hits20.sum() > 30, r20['top1']  # trained weights on real images, not chance (10%)
    assert np.array_equal(hits20, decode_correct(r20_b7['per_image']))
    p = paired_comparison(r20['per_image'], r56['per_image'])
    assert p.images == 60 and p.only_a - p.only_b == hits20.sum() - hits56.sum()
    assert p.error_difference == pytest.approx(r56['top1'] - r20['top1'])
    assert p.ci95[0] <= p.error_difference <= p.ci95[1] and 0 < p.p_value <= 1
    same = paired_comparison(r20['per_image'], r20_b7['per_image'])
    assert (same.only_a, same.only_b, same.p_value, same.ci95) == (0, 0, 1.0, (0.0, 0.0))
    # sdzoo compare: the same pairing from the two files (or a folder holding one as validate.json)
    folder = tmp_path / 'run56'
    folder.mkdir()
    (folder / 'validate.json').write_text((tmp_path / 'r56.json').read_text())
    assert cli_main(['compare', str(tmp_path / 'r20.json'), str(folder), '--out', str(tmp_path / 'c.json')]) == 0
    c = json.loads((tmp_path / 'c.json').read_text())
    assert (c['images'], c['only_first_right'], c['only_second_right']) == (60, p.only_a, p.only_b)
    assert c['mcnemar_p'] == p.p_value and c['second'] == str(folder / 'validate.json')


@pytest.mark.parametrize('second, message', [
    ('missing.json', 'missing.json: no such file'),
    ('empty_dir', 'empty_dir holds no validate.json'),
    ('old.json', 'has no per-image results'),
    ('broken.json', 'is not JSON'),
    ('other.json', 'did not see the same images'),
])
def test_compare_refuses_in_one_line(tmp_path, capsys, second, message):
    labels = list(range(10))
    record = dict(top1=50.0, per_image=encode_per_image([True] * 5 + [False] * 5, labels))
    (tmp_path / 'a.json').write_text(json.dumps(record))
    (tmp_path / 'empty_dir').mkdir()
    (tmp_path / 'old.json').write_text(json.dumps(dict(top1=50.0, top5=90.0)))
    (tmp_path / 'broken.json').write_text('{"top1": ')
    (tmp_path / 'other.json').write_text(json.dumps(dict(record, per_image=encode_per_image([True] * 10, labels[::-1]))))
    with pytest.raises(SystemExit) as exc:
        cli_main(['compare', str(tmp_path / 'a.json'), str(tmp_path / second), '--out', str(tmp_path / 'c.json')])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / 'c.json').exists()


def test_mcnemar_exact_is_the_two_sided_binomial_test_on_the_discordant_images():
    assert mcnemar_exact_p(1, 9) == 22 / 1024  # 2 * (C(10,0) + C(10,1)) / 2^10
    assert mcnemar_exact_p(9, 1) == mcnemar_exact_p(1, 9)
    assert mcnemar_exact_p(0, 5) == 2 / 32
    assert mcnemar_exact_p(5, 5) == 1.0 and mcnemar_exact_p(0, 0) == 1.0
    assert 1e-11 < mcnemar_exact_p(400, 600) < 1e-9  # 2^1000 in exact integers: no float overflow


def test_paired_comparison_refuses_different_images_and_broken_records():
    hits = np.array([True, False, True, True])
    a = encode_per_image(hits, [0, 1, 2, 3])
    with pytest.raises(ValueError, match='same images'):
        paired_comparison(a, encode_per_image(hits, [3, 2, 1, 0]))  # same count, another order
    with pytest.raises(ValueError, match='same images'):
        paired_comparison(a, encode_per_image(hits[:3], [0, 1, 2]))
    with pytest.raises(ValueError, match='4 per-image results for 3 labels'):
        encode_per_image(hits, [0, 1, 2])
    with pytest.raises(ValueError, match='not a per-image record'):
        decode_correct(dict(a, top1_correct='not base64!'))
    with pytest.raises(ValueError, match='says 40 images'):
        decode_correct(dict(a, images=40))
    # one discordant image each way: no difference
    p = paired_comparison(a, encode_per_image([False, True, True, True], [0, 1, 2, 3]))
    assert (p.only_a, p.only_b, p.error_difference) == (1, 1, 0.0)


def test_paired_difference_and_its_interval():
    """a misses 2 of 4 images that b gets: 50 points more error. The interval is exact and conditional on the 2
    discordant images, as the test is: b right on both, Clopper-Pearson (0.025^(1/2), 1) = (0.1581, 1) for its
    share pi, difference (2/4)(2 pi - 1): -34.19 to +50 points. (The earlier Wald interval, 1 to 99 points,
    excluded 0 while p = 0.5.)"""
    labels = [0, 1, 2, 3]
    p = paired_comparison(encode_per_image([False, False, True, True], labels), encode_per_image([True] * 4, labels))
    assert (p.only_a, p.only_b) == (0, 2)
    assert p.error_difference == pytest.approx(50.0) and p.ci95 == pytest.approx((-34.189, 50.0), abs=1e-3)
    assert p.p_value == 0.5  # 2 * C(2,0) / 2^2


def _pair(only_a: int, only_b: int, n: int):
    """Two records of n images: a alone right on the first only_a, b alone right on the next only_b."""
    labels = list(range(n))
    a = [True] * n
    b = [True] * n
    for i in range(only_a):
        b[i] = False
    for i in range(only_a, only_a + only_b):
        a[i] = False
    return paired_comparison(encode_per_image(a, labels), encode_per_image(b, labels))


@pytest.mark.parametrize('only_a, only_b', [(0, 5), (0, 6), (1, 9), (2, 9), (40, 63), (40, 64), (5000, 5250),
                                            (5000, 5300)])
def test_interval_and_exact_test_never_contradict_each_other(only_a, only_b):
    """0 vs 5 discordant of 10,000 gave 'CI +0.01 to +0.09' beside 'p = 0.0625: not distinguishable'."""
    p = _pair(only_a, only_b, 20000 if only_a + only_b > 10000 else 10000)
    excludes_zero = p.ci95[0] > 0 or p.ci95[1] < 0
    assert excludes_zero == (p.p_value < 0.05), (p.ci95, p.p_value)
    assert p.ci95[0] <= p.error_difference <= p.ci95[1]


def test_exact_and_log_space_p_values_agree_where_they_meet():
    from fractions import Fraction
    import math
    from sdzoo.reports.paired import EXACT_INTEGERS_UP_TO, mcnemar_exact_p
    for only_a in (900, 950, 1000):
        n = EXACT_INTEGERS_UP_TO + 2  # just above: the log-space path
        only_b = n - only_a
        exact = float(min(Fraction(1), Fraction(2 * sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1)),
                                                  2 ** n)))
        assert mcnemar_exact_p(only_a, only_b) == pytest.approx(exact, rel=1e-9)
    assert 0 < mcnemar_exact_p(10000, 10500) < 1e-3  # 20,500 discordant images: in milliseconds now, was 34 s


def test_sign_test_is_the_one_sided_binomial_tail():
    from sdzoo.stats import EXACT_INTEGERS_UP_TO, binomial_cdf, sign_test_p
    assert sign_test_p(5, 0) == 1 / 32 and sign_test_p(2, 0) == 0.25 and sign_test_p(0, 0) == 1.0
    assert sign_test_p(3, 1) == 5 / 16  # P(X >= 3), X ~ Bin(4, 1/2): (C(4,3) + C(4,4)) / 16
    assert sign_test_p(0, 4) == 1.0 and sign_test_p(1, 1) == 0.75
    assert sign_test_p(9, 1) * 2 == mcnemar_exact_p(9, 1)  # one side of the two-sided test
    import math
    from fractions import Fraction
    n = EXACT_INTEGERS_UP_TO + 2  # the log-space path above agrees with exact integers
    losses = n // 2 - 40
    exact = float(Fraction(sum(math.comb(n, i) for i in range(losses + 1)), 2 ** n))
    assert sign_test_p(n - losses, losses) == pytest.approx(exact, rel=1e-9)
    assert binomial_cdf(losses, n, 0.5) == pytest.approx(exact, rel=1e-9)
