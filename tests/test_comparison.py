"""MODEL_CARDS.md's SD-vs-constant-depth comparison, built from run directories' own records."""
from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from sdzoo.reports.comparison import (comparison_section, load_epoch_benchmarks, load_runs, load_step_benchmarks,
                                  plot_comparison)
from sdzoo.train.records import clean_epoch_labels, read_metrics, write_metrics

RECIPE = dict(model='sd_resnet20', data='cifar10', epochs=6, batch_size=128, lr=0.1, sched='step', seed=0)
XEON = dict(hardware='Xeon, 2 threads', amp='bfloat16')
EPYC = dict(hardware='EPYC (AVX2), 2 threads', amp='fp32')


def _run(root: Path, name: str, rate, seconds, sessions, top1=None, fraction=0.75, epochs=6) -> Path:
    run = root / name
    run.mkdir(parents=True)
    (run / 'config.json').write_text(json.dumps(dict(RECIPE, epochs=epochs, out=str(run), drop_path_rate=rate)))
    (run / 'sessions.json').write_text(json.dumps(sessions))
    write_metrics(run / 'metrics.csv', [dict(epoch=e + 1, lr=0.1, train_loss=1.0, train_top1=50.0, val_loss=1.0,
                                             val_top1=60.0 + e, val_top5=95.0, epoch_seconds=float(s),
                                             images_per_sec=1.0, wall_clock_hours=0.0,
                                             blocks_run_fraction=1.0 if rate == 0 else fraction)
                                        for e, s in enumerate(seconds)])
    if top1 is not None:
        (run / 'summary.json').write_text(json.dumps(dict(test=dict(top1=top1, top5=99.0, images=10000))))
    return run


def _plotted_axes(runs, png: Path, benchmarks=()) -> list:
    """The axes plot_comparison drew (kept as it saves the figure), after checking it wrote the PNG."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    seen = []
    real_savefig = plt.Figure.savefig

    def keep_axes(fig, *args, **kwargs):
        seen.extend(fig.axes)
        return real_savefig(fig, *args, **kwargs)
    plt.Figure.savefig = keep_axes
    try:
        assert plot_comparison(runs, png, benchmarks) == png and png.is_file()
    finally:
        plt.Figure.savefig = real_savefig
    return seen


def test_epochs_where_a_session_started_are_left_out():
    sessions = [dict(epoch=1, batch=0, **EPYC), dict(epoch=3, batch=40, **XEON)]
    labels = clean_epoch_labels(sessions, 6)
    assert sorted(labels) == [2, 4, 5, 6]  # epoch 1 (start) and 3 (resumed mid-epoch on another CPU) are mixed
    assert labels[2].startswith('EPYC') and labels[4].startswith('Xeon') and labels[4].endswith('bf16 autocast')


def test_pairs_compare_error_and_pace_on_the_common_stretch_only(tmp_path):
    sd = _run(tmp_path, 'r-sd', None, [500, 500, 100, 100, 100, 100],
              [dict(epoch=1, batch=0, **EPYC), dict(epoch=3, batch=0, **XEON)], top1=87.0)
    _run(tmp_path, 'r-nosd', 0.0, [130, 130, 130, 130, 130, 130], [dict(epoch=1, batch=0, **XEON)], top1=86.5)
    _run(tmp_path, 'r-sd-long', None, [100] * 9, [dict(epoch=1, batch=0, **XEON)], top1=88.0, epochs=9)
    _run(tmp_path, 'other-lr', None, [100] * 6, [dict(epoch=1, batch=0, **XEON)], top1=99.0)
    (tmp_path / 'other-lr' / 'config.json').write_text(json.dumps(dict(RECIPE, lr=0.2, drop_path_rate=None)))
    runs = load_runs(tmp_path, lambda model: 0.5)
    text = '\n'.join(comparison_section(runs, 'fig.png'))
    rows = [line for line in text.splitlines() if line.startswith('| sd_resnet20')]
    assert len(rows) == 2, text  # the 6-epoch pair, and the 9-epoch SD run of the same recipe; other-lr is no twin
    # SD: the Xeon stretch's whole epochs 4-6 at 100 s (epoch 3 started there, epochs 1-2 were another CPU)
    assert '| 13.00 | 13.50 | -0.50 | 100 / 130 s on Xeon, 2 threads, bf16 autocast (3 / 5 epochs, medians) | 1.30x |' \
        in rows[0], rows[0]
    assert '0.750 (1.33x)' in rows[0] and '| — / 8.75 |' in rows[0]
    assert rows[1].startswith('| sd_resnet20 (9) | 12.00 | — | -1.50 vs the 6-epoch control |'), rows[1]
    assert 'exceeds what skipping blocks can give' not in text and '![validation top-1' in text
    png = plot_comparison(runs, tmp_path / 'fig.png')
    assert png is not None and Image.open(png).size[0] > 500


def test_no_common_stretch_and_runs_in_training_say_so(tmp_path):
    _run(tmp_path, 'r-sd', None, [100] * 6, [dict(epoch=1, batch=0, **XEON)], top1=87.0)
    _run(tmp_path, 'r-nosd', 0.0, [300, 300], [dict(epoch=1, batch=0, **EPYC)])
    text = '\n'.join(comparison_section(load_runs(tmp_path, lambda model: 0.5)))
    assert '| training: epoch 2/6, val error 39.00 | pending | no common hardware stretch yet | pending |' in text, text
    # a per-epoch ratio beyond what skipping blocks can explain is flagged as a machine difference
    _run(tmp_path / 'b', 'r-sd', None, [50] * 6, [dict(epoch=1, batch=0, **XEON)], top1=87.0)
    _run(tmp_path / 'b', 'r-nosd', 0.0, [130] * 6, [dict(epoch=1, batch=0, **XEON)], top1=86.0)
    text = '\n'.join(comparison_section(load_runs(tmp_path / 'b', lambda model: 0.5)))
    assert '2.60x exceeds what skipping blocks can give (1.33x)' in text, text


def test_without_a_control_there_is_no_table(tmp_path):
    _run(tmp_path, 'r-sd', None, [100] * 6, [dict(epoch=1, batch=0, **XEON)], top1=87.0)
    assert comparison_section(load_runs(tmp_path, lambda model: 0.5)) == ['No constant-depth control run yet.\n']
    assert plot_comparison(load_runs(tmp_path, lambda model: 0.5), tmp_path / 'x.png') is None


def test_per_step_speedup_comes_from_the_side_by_side_benchmark_records(tmp_path):
    """benchmarks/train_speed.py's JSON for the same model and drop_path_rate fills the per-step column."""
    _run(tmp_path / 'runs', 'r-sd', None, [100] * 6, [dict(epoch=1, batch=0, **XEON)], top1=87.0)
    _run(tmp_path / 'runs', 'r-nosd', 0.0, [130] * 6, [dict(epoch=1, batch=0, **XEON)], top1=86.0)
    results = tmp_path / 'results'
    results.mkdir()
    record = dict(kind='sdzoo.train_speed', model='sd_resnet20', drop_path_rate=0.5, machine='Zen 4, 2 cores',
                  configs={'bf16-cl': dict(speedup_vs_no_sd=1.3412), 'fp32': dict(speedup_vs_no_sd=1.29)})
    (results / 'train_speed_zen4.json').write_text(json.dumps(record))
    (results / 'train_speed_other_rate.json').write_text(json.dumps(dict(record, drop_path_rate=0.2)))
    (results / 'train_speed_timm.json').write_text(json.dumps({'not': 'a train_speed record'}))
    (results / 'train_speed_broken.json').write_text('{')
    benchmarks = load_step_benchmarks(results)
    assert [b['file'] for b in benchmarks] == ['train_speed_other_rate.json', 'train_speed_zen4.json']
    text = '\n'.join(comparison_section(load_runs(tmp_path / 'runs', lambda model: 0.5), None, benchmarks))
    row = next(line for line in text.splitlines() if line.startswith('| sd_resnet20'))
    assert '| 1.34x bf16-cl, 1.29x fp32 on Zen 4, 2 cores (`train_speed_zen4.json`) |' in row, row
    assert 'other_rate' not in row
    text = '\n'.join(comparison_section(load_runs(tmp_path / 'runs', lambda model: 0.5)))
    assert '| not measured |' in text


def test_epoch_times_measured_side_by_side_fill_the_per_epoch_columns_and_the_hours_axis(tmp_path):
    """benchmarks/epoch_time.py's record for the same model, data and rate: the per-epoch columns use it, before
    (and beside) the runs' own common stretch; a smoke record (train_subset), a first-steps timing (max_steps)
    and another rate are left out."""
    _run(tmp_path / 'runs', 'r-sd', None, [100] * 6, [dict(epoch=1, batch=0, **XEON)], top1=87.0)
    _run(tmp_path / 'runs', 'r-nosd', 0.0, [300, 300], [dict(epoch=1, batch=0, **EPYC)])
    results = tmp_path / 'results'
    results.mkdir()
    record = dict(kind='sdzoo.epoch_time', model='sd_resnet20', data='cifar10', drop_path_rate=0.5,
                  machine='Zen 4, 2 cores', date='2026-12-03T16:00:00', train_subset=None,
                  median_seconds=dict(sd=30.4, constant=40.2))
    (results / 'epoch_time_r20.json').write_text(json.dumps(record))
    (results / 'epoch_time_smoke.json').write_text(json.dumps(dict(record, train_subset=512)))
    (results / 'epoch_time_first_steps.json').write_text(json.dumps(dict(record, max_steps=60)))
    (results / 'epoch_time_rate.json').write_text(json.dumps(dict(record, drop_path_rate=0.2,
                                                                  median_seconds=dict(sd=1.0, constant=9.0))))
    benchmarks = load_epoch_benchmarks(results)
    assert sorted(b['file'] for b in benchmarks) == ['epoch_time_r20.json', 'epoch_time_rate.json']
    runs = load_runs(tmp_path / 'runs', lambda model: 0.5)
    text = '\n'.join(comparison_section(runs, None, (), benchmarks))
    row = next(line for line in text.splitlines() if line.startswith('| sd_resnet20'))
    assert '| 30 / 40 s, whole epochs alternated on Zen 4, 2 cores (`epoch_time_r20.json`) | 1.32x |' in row, row
    # the runs share no stretch: without the record the columns stay pending
    assert '| no common hardware stretch yet | pending |' in '\n'.join(comparison_section(runs))
    # with a common stretch as well, both are shown, the side-by-side first
    _run(tmp_path / 'b', 'r-sd', None, [100] * 6, [dict(epoch=1, batch=0, **XEON)], top1=87.0)
    _run(tmp_path / 'b', 'r-nosd', 0.0, [130] * 6, [dict(epoch=1, batch=0, **XEON)], top1=86.0)
    text = '\n'.join(comparison_section(load_runs(tmp_path / 'b', lambda model: 0.5), None, (), benchmarks))
    assert ('(`epoch_time_r20.json`); the runs: 100 / 130 s on Xeon, 2 threads, bf16 autocast (5 / 5 epochs, medians) '
            '| 1.32x, 1.30x (runs) |') in text, text
    # the hours axis: plotted at the measured paces (the SD run's 6 epochs at 30.4 s end at 0.0507 h)
    ax = _plotted_axes(runs, tmp_path / 'fig.png', benchmarks)[1]
    ends = sorted(round(line.get_xdata()[-1], 4) for line in ax.get_lines())
    assert ends == [round(2 * 40.2 / 3600, 4), round(6 * 30.4 / 3600, 4)], ends
    assert 'side by side' in ax.get_xlabel()


def test_runs_in_progress_quote_the_pace_of_their_last_whole_epochs(tmp_path):
    """MODEL_CARDS.md's "Runs in progress": an epoch in which a session started (resumed after a stop, its seconds
    spread over two sittings) does not set the pace; without whole epochs the last three are used."""
    from sdzoo.reports.cards import _in_training
    _run(tmp_path, 'r-nosd', 0.0, [300, 310, 320, 900, 330, 2000], [dict(epoch=1, batch=0, **XEON),
                                                                    dict(epoch=6, batch=40, **XEON)], epochs=10)
    row = next(line for line in _in_training(tmp_path) if line.startswith('| `r-nosd`'))
    assert '| 6/10 | 65.00 | 5.5 min | 0.37 h |' in row, row  # epochs 3-5: 320, 900, 330 s -> 330 s; 4 left
    _run(tmp_path / 'b', 'r-nosd', 0.0, [300, 600, 900], [dict(epoch=1, batch=0, **XEON),
                                                         dict(epoch=2, batch=5, **XEON), dict(epoch=3, batch=5, **XEON)])
    row = next(line for line in _in_training(tmp_path / 'b') if line.startswith('| `r-nosd`'))
    assert '| 3/6 | 62.00 | 10.0 min |' in row, row


def _validated(run: Path, hits, labels) -> None:
    """validate.json as sdzoo validate writes it, with its per-image hits."""
    from sdzoo.train.records import encode_per_image
    hits = list(hits)
    (run / 'validate.json').write_text(json.dumps(dict(top1=100.0 * sum(hits) / len(hits), top5=99.0,
                                                       images=len(hits), per_image=encode_per_image(hits, labels))))


def test_paired_per_image_results_give_the_difference_its_interval_and_a_verdict(tmp_path):
    """Both runs validated with per-image hits: the difference cell carries McNemar's p and the paired 95% CI,
    and a generated sentence says whether the test set tells the two apart, whichever way it comes out."""
    labels = [i % 10 for i in range(1000)]
    sd = _run(tmp_path / 'runs', 'r-sd', None, [100] * 6, [dict(epoch=1, batch=0, **XEON)], top1=1.0)
    control = _run(tmp_path / 'runs', 'r-nosd', 0.0, [130] * 6, [dict(epoch=1, batch=0, **XEON)], top1=1.0)
    # 900 shared hits; SD alone gets 30 more right, the control alone 20: 1 point lower error, p = 0.20
    _validated(sd, [True] * 930 + [False] * 70, labels)
    _validated(control, [True] * 900 + [False] * 30 + [True] * 20 + [False] * 50, labels)
    text = '\n'.join(comparison_section(load_runs(tmp_path / 'runs', lambda model: 0.5)))
    row = next(line for line in text.splitlines() if line.startswith('| sd_resnet20 (6)'))
    # exact interval, conditional on the 50 discordant images (Clopper-Pearson for 20 of 50, times 50 / 1000)
    assert '| 7.00 | 8.00 | -1.00 (95% CI -2.36 to +0.48; McNemar p = 0.2) |' in row, row
    verdict = next(line for line in text.splitlines() if 'SD against constant depth' in line)
    assert 'the first gets 30 right that the second gets wrong, the second 20' in verdict, verdict
    assert 'does not tell the two apart' in verdict and '1.00 points lower' in verdict
    # a decisive split reads the other way
    _validated(control, [True] * 850 + [False] * 80 + [True] * 0 + [False] * 70, labels)
    text = '\n'.join(comparison_section(load_runs(tmp_path / 'runs', lambda model: 0.5)))
    verdict = next(line for line in text.splitlines() if 'SD against constant depth' in line)
    assert 'the two networks differ on this test set' in verdict and '8.00 points lower' in verdict, verdict
    # evaluations of different images are not paired: the plain difference only
    _validated(control, [True] * 900 + [False] * 100, [i % 7 for i in range(1000)])
    row = next(line for line in comparison_section(load_runs(tmp_path / 'runs', lambda model: 0.5))
               if line.startswith('| sd_resnet20 (6)'))
    assert '| -3.00 |' in row and 'McNemar' not in row, row


def test_time_to_accuracy_and_a_forked_branch(tmp_path):
    """The time-to-accuracy table: the first epoch at or above each threshold, with hours at the side-by-side
    pace; a longer branch forked from the SD run is drawn from its fork on, so it does not hide the run's start."""
    from sdzoo.reports.comparison import _shared_epochs
    sd = _run(tmp_path / 'runs', 'r-sd', None, [100] * 30, [dict(epoch=1, batch=0, **XEON)], top1=87.0, epochs=30)
    _run(tmp_path / 'runs', 'r-nosd', 0.0, [130] * 30, [dict(epoch=1, batch=0, **XEON)], top1=86.0, epochs=30)
    branch = _run(tmp_path / 'runs', 'r-sd-long', None, [100] * 40, [dict(epoch=1, batch=0, **XEON)], top1=88.0,
                  epochs=40)
    rows = read_metrics(branch / 'metrics.csv')  # forked after epoch 12: its own train loss from epoch 13 on
    write_metrics(branch / 'metrics.csv', rows[:12] + [dict(r, train_loss=0.9) for r in rows[12:]])
    runs = {r.name: r for r in load_runs(tmp_path / 'runs', lambda model: 0.5)}
    assert _shared_epochs(runs['r-sd-long'], runs['r-sd']) == 12
    results = tmp_path / 'results'
    results.mkdir()
    (results / 'epoch_time_r20.json').write_text(json.dumps(dict(
        kind='sdzoo.epoch_time', model='sd_resnet20', data='cifar10', drop_path_rate=0.5, machine='Zen 4',
        date='2026-12-05', median_seconds=dict(sd=360.0, constant=720.0))))
    text = '\n'.join(comparison_section(list(runs.values()), None, (), load_epoch_benchmarks(results)))
    # val top-1 is 60 + (epoch - 1): >= 80% first at epoch 21, >= 85% at 26; 90% never in 30 epochs, at 31 in 40
    assert ('| `r-sd` (drop_path_rate 0.5) | epoch 21, 2.1 h | epoch 26, 2.6 h | epoch 29, 2.9 h | — | 89.00 (30) |'
            in text), text
    assert '| `r-nosd` (constant depth) | epoch 21, 4.2 h | epoch 26, 5.2 h | epoch 29, 5.8 h | — |' in text, text
    assert '| `r-sd-long` (drop_path_rate 0.5) | epoch 21, 2.1 h | epoch 26, 2.6 h | epoch 29, 2.9 h | epoch 31, 3.1 h |' \
        in text, text
    lines = {line.get_label(): line for line in _plotted_axes(list(runs.values()), tmp_path / 'fig.png')[0].get_lines()}
    branch_line = lines['r-sd-long (drop_path_rate 0.5), branched after epoch 12']
    assert branch_line.get_xdata()[0] == 12 and branch_line.get_xdata()[-1] == 40
    assert lines['r-sd (drop_path_rate 0.5)'].get_xdata()[0] == 1


def test_a_longer_sd_run_with_a_control_of_its_own_is_shown_once(tmp_path):
    """The 300-epoch SD run is both longer than the 160-epoch control and the twin of the 300-epoch control: it
    gets its own row beside that control, not a second 'vs the shorter control' row, and one time-to-accuracy row;
    the verdict on training longer (SD against SD) stays."""
    labels = [i % 10 for i in range(100)]
    for name, rate, epochs, hits in (('r-sd', None, 6, 80), ('r-nosd', 0.0, 6, 79), ('r-sd-long', None, 9, 90)):
        run = _run(tmp_path / 'runs', name, rate, [100] * epochs, [dict(epoch=1, batch=0, **XEON)], epochs=epochs)
        _validated(run, [True] * hits + [False] * (100 - hits), labels)
    _run(tmp_path / 'runs', 'r-nosd-long', 0.0, [130] * 4, [dict(epoch=1, batch=0, **XEON)], epochs=9)
    text = '\n'.join(comparison_section(load_runs(tmp_path / 'runs', lambda model: 0.5)))
    rows = [line for line in text.splitlines() if line.startswith('| sd_resnet20')]
    assert [r.split(' | ')[0] for r in rows] == ['| sd_resnet20 (6)', '| sd_resnet20 (9)'], rows
    assert '| 10.00 | training: epoch 4/9, val error 37.00 | pending |' in rows[1], rows[1]
    assert sum(line.startswith('| `r-sd-long`') for line in text.splitlines()) == 1, text
    assert '**9 against 6 epochs, both SD at drop_path_rate 0.5:**' in text
