"""The speed settings change how a step runs, not what it computes.

Compiled recurrent updates (``speed.compile``) train like the eager model (fp32: outputs and gradients to 1e-4, the
contract of every fast path; on CUDA with TF32 off, CUDA graphs included), the per-device defaults are what
docs/PERFORMANCE.md measured, the allocator setting keeps freed memory, and the optimizer's fused kernel takes the
steps of the plain loop. Speed itself is measured by ``benchmarks/``, not here.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from stereo_exp.config import register_configs
from stereo_exp.engine.optim import Implementation, OptimConfig, build_optimizer, implementation_options
from stereo_exp.models import prepare_for_training
from stereo_exp.models.crestereo import crestereo_tiny
from stereo_exp.models.raft_stereo import raft_stereo_tiny
from stereo_exp.models.speed import resolve_speed
from stereo_exp.schemas import SpeedConfig
from tests.conftest import compose_train_config

ATOL = 1e-4  # fp32 contract of every fast path: disparities in px, gradients relative to the largest one


def _pair(height: int, width: int, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    left = torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(0)) * 2 - 1
    return left, torch.roll(left, shifts=-3, dims=-1)


def _train_pass(model, left, right, flow_init, num_iters):
    """Outputs and gradients of one training forward + backward."""
    model.train().zero_grad(set_to_none=True)
    predictions = model(left, right, flow_init, num_iters=num_iters)
    sum((p - 3).abs().mean() for p in predictions).backward()
    return [p.detach() for p in predictions], [p.grad for p in model.parameters()]


def _assert_same_training(eager, compiled, *, atol: float) -> None:
    (eager_out, eager_grads), (compiled_out, compiled_grads) = eager, compiled
    for p, q in zip(eager_out, compiled_out, strict=True):
        torch.testing.assert_close(q, p, atol=atol, rtol=0)
    scale = max(g.abs().max().item() for g in eager_grads if g is not None)
    for g, h in zip(eager_grads, compiled_grads, strict=True):
        assert (g is None) == (h is None)  # parameters the pass does not reach (with flow_init: the coarse levels)
        if g is not None:
            torch.testing.assert_close(h, g, atol=atol * scale, rtol=0)


# ----------------------------------------------------------------------------------------------------------------
# Compiled updates
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_compiled_crestereo_updates_train_like_the_eager_model_step_after_step():
    """Inductor on the CPU (the code path CUDA runs too, minus CUDA graphs). The finest level's updates with both
    search windows (a cascade-style flow_init skips the coarse levels, keeping compilation to two graphs)."""
    torch.manual_seed(0)
    eager, compiled = crestereo_tiny(), crestereo_tiny()
    compiled.load_state_dict(eager.state_dict())
    compiled.compile_updates(dynamic=False)
    left, right = _pair(32, 48)
    flow_init = torch.full((1, 1, 8, 12), 2.5)  # positive disparity on the 1/4 grid
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (eager, compiled)]
    for _ in range(2):  # the second step reuses the compiled graphs with the updated weights
        results = [_train_pass(m, left, right, flow_init, num_iters=2) for m in (eager, compiled)]
        _assert_same_training(*results, atol=ATOL)
        assert results[0][0][-1].abs().mean() > 0.1  # real disparities, not zeros: the comparison means something
        for optimizer in optimizers:
            optimizer.step()


@pytest.mark.parametrize("builder", [crestereo_tiny, raft_stereo_tiny])
def test_compiled_updates_run_in_training_mode_only_unless_asked(builder):
    """Validation and prediction run the eager model (no compilation per evaluation size); ``in_eval`` opts in."""
    calls = []

    def recording_backend(graph, example_inputs):
        calls.append(len(example_inputs))
        return graph.forward  # run the captured graph as it is: no inductor, this test checks the routing

    left, right = _pair(32, 64)
    flow_init = torch.full((1, 1, 32, 64), 2.0)  # a disparity prior: CREStereo then refines at 1/4 only (one graph)
    for in_eval in (False, True):
        torch._dynamo.reset()
        calls.clear()
        model = builder()
        model.compile_updates(backend=recording_backend, in_eval=in_eval, dynamic=False)
        with torch.no_grad():
            model.eval()(left, right, flow_init, num_iters=1)
        assert bool(calls) == in_eval
    model.train()(left, right, flow_init, num_iters=1)
    assert calls


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (the device check of docs/PERFORMANCE.md)")
@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compiled_updates_on_cuda_train_like_the_eager_model_with_tf32_off(mode, monkeypatch):
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    torch.manual_seed(0)
    eager, compiled = crestereo_tiny().cuda(), crestereo_tiny().cuda()
    compiled.load_state_dict(eager.state_dict())
    compiled.compile_updates(mode=mode, dynamic=False)
    left, right = (x.cuda() for x in _pair(64, 96, batch=2))
    for _ in range(3):  # CUDA graphs are recorded on a later call than the first: compare past it
        torch.compiler.cudagraph_mark_step_begin()
        _assert_same_training(
            _train_pass(eager, left, right, None, num_iters=4),
            _train_pass(compiled, left, right, None, num_iters=4),
            atol=ATOL,
        )


# ----------------------------------------------------------------------------------------------------------------
# The speed section
# ----------------------------------------------------------------------------------------------------------------


def test_speed_defaults_compile_on_gpus_and_keep_freed_memory_on_cpus():
    cpu, cuda = resolve_speed(SpeedConfig(), "cpu"), resolve_speed(SpeedConfig(), "cuda")
    assert (cpu.compile, cpu.compile_mode, cpu.keep_freed_memory) == (False, "default", True)
    assert (cuda.compile, cuda.compile_mode, cuda.keep_freed_memory) == (True, "reduce-overhead", False)
    chosen = resolve_speed(SpeedConfig(compile=True, compile_mode="max-autotune", keep_freed_memory=False), "cpu")
    assert (chosen.compile, chosen.compile_mode, chosen.keep_freed_memory) == (True, "max-autotune", False)


def test_prepare_for_training_compiles_the_updates_and_keeps_the_state_dict(tmp_path):
    cfg = compose_train_config(tmp_path, "speed.compile=true", "speed.keep_freed_memory=false")
    model = crestereo_tiny()
    keys = list(model.state_dict())
    assert prepare_for_training(model, cfg.speed, torch.device("cpu")) is model
    assert model._compiled_refine_step is not None  # built lazily: nothing is compiled before the first step
    assert list(model.state_dict()) == keys
    untouched = crestereo_tiny()
    prepare_for_training(untouched, compose_train_config(tmp_path).speed, torch.device("cpu"))  # CPU default: eager
    assert untouched._compiled_refine_step is None


def test_compile_of_a_model_without_compile_updates_is_refused_when_asked_and_skipped_when_automatic(tmp_path):
    network = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match=r"speed\.compile=true: Linear has no compile_updates"):
        prepare_for_training(network, SpeedConfig(compile=True, keep_freed_memory=False), "cpu")
    assert prepare_for_training(network, SpeedConfig(keep_freed_memory=False), "cuda") is network  # auto: skipped


@pytest.mark.parametrize("value", ["fast", "reduce_overhead"])
def test_an_unknown_compile_mode_stops_the_run_naming_the_key(tmp_path, value):
    from omegaconf import OmegaConf

    register_configs()
    cfg = compose_train_config(tmp_path, f"speed.compile_mode={value}")
    with pytest.raises(ValueError, match=r"speed\.compile_mode must be one of"):
        OmegaConf.to_object(cfg)


def test_keep_freed_memory_reuses_freed_pages_instead_of_faulting_them_in_again():
    """In a fresh process (the setting is process-wide): re-allocating a freed 64 MiB tensor costs a page fault per
    4 KiB page by default, and almost none once glibc keeps freed memory."""
    script = textwrap.dedent(
        """
        import resource, sys, torch
        from stereo_exp.models.speed import keep_freed_memory
        if sys.argv[1] == "keep":
            assert keep_freed_memory()
        def faults_of_a_fresh_tensor():
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            torch.ones(16 * 2**20)  # 64 MiB, written, then freed
            return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
        faults_of_a_fresh_tensor()
        print(min(faults_of_a_fresh_tensor() for _ in range(3)))
        """
    )
    pages = 64 * 2**20 // 4096
    faults = {}
    for mode in ("default", "keep"):
        run = subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True, check=True)
        faults[mode] = int(run.stdout.split()[-1])
    assert faults["default"] > pages // 2, faults  # glibc unmaps the freed block: every page faults again
    assert faults["keep"] < pages // 10, faults


# ----------------------------------------------------------------------------------------------------------------
# Optimizer implementations
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd"])
def test_fused_and_foreach_optimizers_take_the_steps_of_the_plain_loop(name):
    params = {}
    for implementation in Implementation:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 9, 2))
        cfg = OptimConfig(name=name, weight_decay=1e-2, implementation=implementation)
        optimizer = build_optimizer(model, cfg, lr=0.1)
        for step in range(5):
            optimizer.zero_grad()
            model(torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(step))).square().sum().backward()
            optimizer.step()
        params[implementation] = torch.cat([p.detach().flatten() for p in model.parameters()])
    for implementation, values in params.items():
        torch.testing.assert_close(values, params[Implementation.for_loop], atol=1e-6, rtol=0, msg=implementation)


def test_auto_implementation_picks_the_fused_kernel_on_the_cpu():
    assert implementation_options("auto", [torch.zeros(2, requires_grad=True)]) == {"fused": True}
    assert implementation_options("for_loop", [torch.zeros(2)]) == {"foreach": False}
