"""What a GPU run needs that a CPU run does not show: no host sync per step,
checkpoints that move between machines, the device check."""
import json, os, shutil, subprocess, sys
from contextlib import contextmanager
from pathlib import Path
import pytest
import torch
from conftest import QUIET, ROOT
from domain_canine.bench import PoisonSteps
from domain_canine.checkpoint import MARKER, _sha256, load_checkpoint
from domain_canine.evaluation import cloze_eval, cloze_positions, masked_eval, pseudo_log_likelihood
from domain_canine.inference import Predictor
from domain_canine.masking import EncodedDomains
from domain_canine.model import MLMOutput, build_model
from domain_canine.config import resolve_config
from domain_canine.callbacks import Callback
from domain_canine.training import Trainer

# each makes the host wait for the device
SYNCS = ('item', 'tolist', 'cpu', '__bool__', '__int__', '__float__', '__index__')

class HostReadCounter(Callback):
    """Counts the host syncs of each step's span: from one `on_step` to the next
    (the after-step bookkeeping, then the next step)."""
    def __init__(self, monkeypatch, trainer):
        self.count, self.paused, self.per_step = 0, False, {}
        for name in SYNCS:
            original = getattr(torch.Tensor, name)
            def counted(t, *a, _original=original, **kw):
                if not self.paused: self.count += 1
                return _original(t, *a, **kw)
            monkeypatch.setattr(torch.Tensor, name, counted)
        real_next = trainer.next_group
        # reading batches is host work on host tensors (DataLoader workers on a GPU machine)
        def next_group(micro):
            self.paused = True
            try: return real_next(micro)
            finally: self.paused = False
        trainer.next_group = next_group
    def on_step(self, trainer):
        self.per_step[trainer.state.step] = self.count

@pytest.mark.parametrize('accumulation', [1, 2])
def test_at_most_one_host_sync_per_logging_interval(tmp_path, monkeypatch, accumulation):
    t = Trainer.from_config(resolve_config('tiny', output_dir=str(tmp_path), max_steps=21,
                                           logging_steps=5, eval_steps=1_000,
                               save_steps=1_000, gradient_accumulation_steps=accumulation), **QUIET)
    counter = HostReadCounter(monkeypatch, t)
    t.callbacks.append(counter)
    t.fit()
    steps = sorted(counter.per_step)
    # after-step k, then step k + 1
    spans = {k: counter.per_step[k + 1] - counter.per_step[k] for k in steps[:-1]}
    assert spans and all(n == (1 if k % 5 == 0 else 0) for k, n in spans.items()), spans
    assert t.state.window_steps == 0 and t.state.step == 21

def test_the_skip_of_a_nan_step_is_decided_without_the_host(tmp_path, monkeypatch):
    t = Trainer.from_config(resolve_config('tiny', output_dir=str(tmp_path), max_steps=10,
                                           logging_steps=10, eval_steps=1_000,
                               save_steps=1_000, max_bad_steps=3), [PoisonSteps(6, 2)], **QUIET)
    counter = HostReadCounter(monkeypatch, t)
    t.callbacks.append(counter)
    t.fit()
    assert t.state.skipped_steps == 2 and all(torch.isfinite(p).all() for p in t.model.parameters())
    # steps 2-9: no sync at all
    assert all(counter.per_step[k + 1] == counter.per_step[k] for k in range(1, 9))

# --- checkpoints written by an 8-GPU job, resumed on fewer GPUs, one GPU and the CPU

def _reseal(ck: Path):
    "Rewrite the checksum marker after the files of `ck` were changed on purpose."
    marker = json.loads((ck / MARKER).read_text())
    marker['files'] = {p.name: _sha256(p) for p in sorted(ck.iterdir()) if p.name != MARKER}
    (ck / MARKER).write_text(json.dumps(marker))

@contextmanager
def saving_as_cuda():
    """Within the block, torch.save writes every tensor as if it lived on
    cuda:3 (what a state saved on a GPU looks like)."""
    tag = lambda obj: 'cuda:3' if getattr(obj, 'device',
                                          None) is not None and obj.device.type == 'cpu' else None
    # loading falls through to torch's own
    torch.serialization.register_package(0, tag, lambda obj, location: None)
    try: yield
    finally:
        torch.serialization._package_registry[:] = [p
                                                    for p in torch.serialization._package_registry
                                                    if p[1] is not tag]

def eight_gpu_checkpoint(src: Path, dst: Path) -> Path:
    "A copy of a CPU checkpoint whose files look like those of an 8-process job on 8 GPUs."
    ck = Path(shutil.copytree(src, dst))
    state = json.loads((ck / 'trainer_state.json').read_text())
    state['world_size'] = 8
    (ck / 'trainer_state.json').write_text(json.dumps(state))
    # a CUDA generator state per visible GPU
    gpu_states = [torch.randint(0, 255, (16,), dtype=torch.uint8) for _ in range(8)]
    rng = torch.load(ck / 'rng_state.pt', weights_only=True)
    for r in range(8):
        torch.save(dict(rng, cuda=gpu_states), ck / ('rng_state.pt' if r == 0
                                                     else f'rng_state_rank_{r}.pt'))
    optimizer = torch.load(ck / 'optimizer.pt', weights_only=True)
    with saving_as_cuda(): torch.save(optimizer, ck / 'optimizer.pt')
    _reseal(ck)
    return ck

def test_the_constructed_checkpoint_really_claims_a_gpu(tiny_run, tmp_path):
    ck = eight_gpu_checkpoint(tiny_run / 'checkpoint-step-30', tmp_path / 'ck')
    if not torch.cuda.is_available():  # what loading it without map_location did on a CPU machine
        with pytest.raises(RuntimeError, match='CUDA'):
            torch.load(ck / 'optimizer.pt', weights_only=True)
    assert len(torch.load(ck / 'rng_state_rank_7.pt', weights_only=True)['cuda']) == 8

def test_a_checkpoint_of_8_gpus_resumes_on_fewer_processes_and_on_the_cpu(tiny_run, tmp_path):
    ck = eight_gpu_checkpoint(tiny_run / 'checkpoint-step-30', tmp_path / 'checkpoint-step-30')
    t = Trainer.from_config(resolve_config('tiny', output_dir=str(tmp_path / 'probe'),
                                           num_samples=300), **QUIET)
    # any rank of a smaller job finds its own generators and sets those of the GPUs it has
    for rank in (0, 1, 3, 7):
        state = load_checkpoint(ck, t.model, t.optimizer, rank=rank)
        assert state.step == 30 and state.world_size == 8
    assert all(v.device.type == 'cpu' for s in t.optimizer.state.values() for v in s.values()
               if torch.is_tensor(v))
    t = Trainer.from_config(resolve_config('tiny', output_dir=str(tmp_path / 'run'),
                                           num_samples=300, max_steps=34, resume_from=str(ck)),
                            **QUIET)
    t.fit()
    assert t.state.step == 34 and t.state.world_size == 1

def test_cuda_generator_states_are_set_for_the_gpus_present(monkeypatch):
    from domain_canine import checkpoint
    set_states = {}
    monkeypatch.setattr(checkpoint.torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(checkpoint.torch.cuda, 'device_count', lambda: 2)
    monkeypatch.setattr(checkpoint.torch.cuda, 'set_rng_state', lambda state,
                        device: set_states.__setitem__(device, state))
    states = [torch.full((16,), i, dtype=torch.uint8) for i in range(8)]
    # 8 saved, 2 present: no IndexError
    checkpoint.set_rng_states(dict(checkpoint.rng_states(), cuda=states))
    assert sorted(set_states) == [0, 1] and torch.equal(set_states[1], states[1])

# --- evaluation, inference and scoring: masked positions come
# from the host, the results come back once

class OnDevice(torch.Tensor):
    "Stands for a tensor on an accelerator: counts each call that would make the host wait for it."
    waits = 0
    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        name = getattr(func, '__name__', '')
        if name in SYNCS + ('numpy', 'nonzero', 'unique'): cls.waits += 1
        out = super().__torch_function__(func, types, args, kwargs or {})
        return out.as_subclass(torch.Tensor) if name == 'cpu' else out  # back on the host

class DeviceModel(torch.nn.Module):
    "A model whose outputs live 'on the device'; it refuses to find the masked positions itself."
    def __init__(self, model):
        super().__init__()
        self.model, self.vocab, self.mask_id = model, model.vocab, model.mask_id
    def forward(self, input_ids, attention_mask, labels=None, masked_index=None, positions=None):
        assert masked_index is not None, 'the masked positions must come with the batch, from the host'
        out = self.model(input_ids, attention_mask, labels, masked_index)
        on_device = lambda t: None if t is None else t.as_subclass(OnDevice)
        return MLMOutput(on_device(out.loss), on_device(out.logits), on_device(out.labels))

def waits(fn) -> int:
    OnDevice.waits = 0
    fn()
    return OnDevice.waits

def test_evaluation_and_scoring_wait_for_the_device_once_whatever_the_number_of_batches():
    torch.manual_seed(0)
    model, domains = DeviceModel(build_model(None, 'tiny')), [f'name{i}.{tld}' for i in range(24)
                                                              for tld in ('com', 'io')]
    enc = EncodedDomains.from_strings(domains)
    for batch_size in (48, 8):  # one batch, then six
        # the losses and the ranks
        assert waits(lambda: masked_eval(model, enc, batch_size, progress=False)) == 2
        assert waits(lambda: cloze_eval(model, enc, cloze_positions(enc.lengths), batch_size,
                                        progress=False)) == 2
        assert waits(lambda: pseudo_log_likelihood(model, domains, batch_size, progress=False)) == 1

def test_the_predictor_waits_once_per_pass():
    torch.manual_seed(0)
    p = Predictor(DeviceModel(build_model(None, 'tiny')), 'cpu')
    # one mask each: one pass
    assert waits(lambda: p.predict(['a?.io', 'goo?le.com', 'ex?mple.org'])) == 1
    # the second mask is predicted again with the first filled in
    assert waits(lambda: p.predict(['a??.io'])) == 2
