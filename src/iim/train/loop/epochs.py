"""THE epoch loop, of ``iim train`` (one run) and of joint training (several runs together,
:mod:`iim.train.joint`): each epoch's draw and steps, the epoch's diagnostics, a checkpoint and an
epoch line per run."""
from __future__ import annotations

import time

import numpy as np
from tqdm.auto import tqdm

from ...errors import IIMError
from ..diagnostics import collapse_warnings, epoch_diagnostics, format_diagnostics
from .contexts import prototypes_of
from .prepare import Run
from .saving import save
from .schedule import epoch_batches, epoch_draw, lr_at_epoch
from .steps import StepFailed, is_compile_error, loss_text, sgd_steps


def _steps(feats, batches):
    """The inputs of every optimiser step of ``batches``, fetched as they are taken."""
    for idx in batches:
        yield from feats.steps(idx)


def run_epoch(epoch: int, runs: list[Run], forward, bar, *, compiled: bool) -> list:
    """One epoch of every run in ``runs`` (same split, batch size, steps): each its own lr, its own
    seed's views and order (:func:`epoch_draw`), then every step of all runs together
    (``forward(runs, inputs) -> [[loss, pos, neg, div]]``, :func:`sgd_steps`) -> each run's history
    entry, with :mod:`iim.train.diagnostics` of its new ID prototypes on this epoch's support views,
    or the ``FloatingPointError`` that stopped it (before its update). A failing compile raises
    :class:`StepFailed`."""
    orders, steps = [], []
    for r in runs:
        c = r.cfg
        lr = lr_at_epoch(epoch, lr=c.lr, epochs=c.epochs, warmup_epochs=c.warmup_epochs, warmup_lr=c.warmup_lr)
        for group in r.optimizer.param_groups:
            group["lr"] = lr
        view, order = epoch_draw(c.seed, epoch, r.feats.split.n, r.feats.split.views)
        r.feats.start_epoch(view)
        orders.append(order)
        steps.append(_steps(r.feats, epoch_batches(order, c.batch_size)))
    t0 = time.perf_counter()
    bar.set_description(f"epoch {epoch + 1}/{runs[0].cfg.epochs}")
    sums, n_steps = np.zeros((len(runs), 4)), 0
    stopped: list = [None] * len(runs)
    for step, inputs in enumerate(zip(*steps)):
        live = [i for i, e in enumerate(stopped) if e is None]
        if not live:
            break
        try:
            values, finite = sgd_steps(forward([runs[i] for i in live], [inputs[i] for i in live]),
                                       [runs[i].optimizer for i in live])
        except Exception as e:            # the first step compiles (--compile, flex): say what failed
            if compiled or not is_compile_error(e):
                raise
            raise StepFailed(f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}") from e
        compiled, n_steps = True, n_steps + 1
        for i, v, ok in zip(live, values, finite):
            sums[i] += v
            if not ok:
                stopped[i] = FloatingPointError(f"step {step + 1} ({loss_text(v)})")
        v = values[0]
        bar.set_postfix(loss=f"{v[0]:.3f}", pos=f"{v[1]:.3f}", neg=f"{v[2]:.3f}", div=f"{v[3]:.3f}",
                        lr=f"{runs[live[0]].optimizer.param_groups[0]['lr']:.2e}", refresh=False)
        bar.update()
    seconds = time.perf_counter() - t0
    entries = []
    done = [r for r, err in zip(runs, stopped) if err is None]
    for r, protos in zip(done, prototypes_of([r.encoder for r in done]) if done else []):
        r.protos = protos                 # the new prototypes, for the checkpoint
    for r, order, total, err in zip(runs, orders, sums, stopped):
        if err is not None:
            entries.append(err)
            continue
        # ID-only diagnostics of the new prototypes on this epoch's support views (no test or OOD image)
        id_p = r.protos[0]
        k = r.cfg.k if r.cfg.k is not None else min(50, r.feats.split.hw)   # CoOp / LoCoOp have no k of their own
        diag = epoch_diagnostics(id_p.to(r.feats.device), (r.feats.batch(i) for i in order.split(256)), k,
                                 start_proto=r.global_protos.to(r.feats.device))
        loss_m, pos_m, neg_m, div_m = (float(v) for v in total / n_steps)
        entries.append({"epoch": epoch + 1, "lr": r.optimizer.param_groups[0]["lr"], "loss": loss_m,
                        "pos": pos_m, "neg": neg_m, "div": div_m, "steps": n_steps, "seconds": seconds, **diag})
    return entries


def train_epochs(runs: list[Run], forward, *, progress: bool = True) -> None:
    """THE epoch loop, of ``iim train`` (one run) and of joint training (several, same epochs and
    steps): every remaining epoch of every run (a run resumed further along joins at its epoch), a
    checkpoint and an epoch line per run after each. A run whose loss turns non-finite stops with its
    last good checkpoint kept (``run.error``); the others go on."""
    first, epochs, n_steps = min(r.start for r in runs), runs[0].cfg.epochs, runs[0].n_steps
    bar = tqdm(total=epochs * n_steps, initial=first * n_steps, unit="step",
               disable=None if progress else True,  # None: no bar when stderr is not a terminal
               dynamic_ncols=True, desc=f"epoch {first + 1}/{epochs}")
    try:
        for epoch in range(first, epochs):
            live = [r for r in runs if r.error is None and r.start <= epoch]
            if not live:
                break
            try:
                entries = run_epoch(epoch, live, forward, bar, compiled=epoch > first)
            except StepFailed as e:
                hint = "without --compile" if live[0].cfg.compile != "off" else "with --attention auto"
                raise IIMError(f"torch.compile failed ({e}); train {hint}") from e.__cause__
            for r, entry in zip(live, entries):
                if isinstance(entry, FloatingPointError):
                    kept = (f"the last good checkpoint (epoch {r.state['epoch']}) is kept in {r.path}" if r.state
                            else "no checkpoint was written")
                    r.error = IIMError(f"non-finite loss at epoch {epoch + 1}, {entry}; training stopped and "
                                       f"{kept}; try a smaller --lr")
                    continue
                r.history.append(entry)
                r.state = save(r.path, cfg=r.cfg, config=r.config, fingerprint=r.fingerprint, encoder=r.encoder,
                               optimizer=r.optimizer, global_protos=r.global_protos, history=r.history,
                               protos=r.protos)
                r.log(f"epoch {epoch + 1}/{epochs}  loss {entry['loss']:.4f} (pos {entry['pos']:.4f}, neg "
                      f"{entry['neg']:.4f}, div {entry['div']:.4f})  lr {entry['lr']:.2e}  "
                      f"{format_diagnostics(entry)}{'  COLLAPSED' if entry['collapsed'] else ''}  "
                      f"{entry['seconds']:.1f}s  -> {r.path}")
    finally:
        bar.close()
    for r in runs:
        if r.error is None:
            for w in collapse_warnings(r.state):
                r.log(f"warning: {w}")
