"""Submissions that forge what used to be measured inside the worker gain nothing.

Each case is the reference solution with one hostile edit that gets the property's points
only if the grader trusts something the submission's own process says or does: a memory
counter it resets, a FLOP counter or call counter it removes, a ban it captured the
function before, a hook it steps around, a launch count it bumps while torch computes the
answer. The grader now decides these from outside the worker (a memory cap set before the
submission is imported, NaN-poisoned future keys, a cache the grader fills and alters, a
probe model, the submission's source, the kernels replayed in a worker of their own), so
every case must fail exactly the tests of the property it attacks.

Against the grader before this change (commit 61f92ec) every case below scored full marks
on the attacked tests (checked by hand; the old in-worker adapters are gone).
"""
import pytest

from tests.conftest import materialize, results, run_grader

A, L, K, G = "attention.py", "layers.py", "kv_cache.py", "gpt.py"
FA, FT = "flash_attention.py", "flash_attention_triton.py"

FLASH_LSE = "lse = torch.empty(q3.shape[0], n_q, dtype=acc_dtype, device=q.device)"  # before the loop
TRITON_HOST = "    _check_inputs(q, k, v)\n    b, h, n_q, d = q.shape\n    n_k = k.shape[2]\n"  # the forward's host code
TRITON_BACKWARD = "        q, k, v, o, lse = ctx.saved_tensors\n"
TRITON_FAILS = ["triton_kernel_output", "triton_forward_lse", "triton_backward"]  # the backward replays the forward
# a kernel that copies what the host computed, added after the imports with TORCH_ATTENTION
COPY_KERNEL = ("\n\n@triton.jit\ndef _copy_kernel(src, dst, n, BLOCK: tl.constexpr):\n"
               "    offs = tl.arange(0, BLOCK)\n    tl.store(dst + offs, tl.load(src + offs, mask=offs < n), "
               "mask=offs < n)\n")
# attention with torch functions taken at import, before any runtime ban exists
TORCH_ATTENTION = (
    "\n_matmul, _softmax = torch.matmul, torch.softmax\n\n\n"
    "def _torch_attention(q, k, v, is_causal):\n"
    "    s = _matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])\n"
    "    if is_causal:\n"
    "        n_q, n_k = q.shape[-2], k.shape[-2]\n"
    "        future = torch.arange(n_k)[None, :] > torch.arange(n_q)[:, None] + (n_k - n_q)\n"
    "        s = s.masked_fill(future, float('-inf'))\n"
    "    return _matmul(_softmax(s, -1), v)\n")

ATTACKS = {
    # memory: the old test reset VmHWM through /proc/self/clear_refs inside the worker
    "full_matrix_then_resets_the_peak": dict(
        exercise="flash_attention", fails=["memory_stays_linear"],
        edits={FA: [(FLASH_LSE,
                     FLASH_LSE + "\n"
                     "scores = q3 @ k_t  # the whole n_q x n_k matrix\n"
                     "del scores\n"
                     "with open('/proc/self/clear_refs', 'w') as f:\n    f.write('5')  # forget the peak")]}),
    # causal skipping: the old test counted FLOPs with FlopCounterMode, which a submission can pop
    "no_skipping_hidden_from_the_flop_counter": dict(
        exercise="flash_attention", fails=["causal_skips_future_blocks"],
        # visits every key block; the ones in the future are computed with elementwise products
        # (no matmul for a FLOP counter to see) and masked, and NaN is scrubbed from k and v
        edits={FA: [("if is_causal:", "if False:"),  # _key_blocks: every key block, future ones too
                    ("if is_causal and j1 - 1 > n_k - n_q + i0:\n"
                     "    bias = _causal_tile_bias(i0, i1, j0, j1, n_q, n_k, acc_dtype, q.device, bias_cache)\n"
                     "    s = torch.baddbmm(bias, q_i, k_t[:, :, j0:j1])\n"
                     "else:\n"
                     "    s = torch.bmm(q_i, k_t[:, :, j0:j1])",
                     "future = is_causal and j0 > n_k - n_q + i1 - 1\n"
                     "k_tile, v_tile = torch.nan_to_num(k_t[:, :, j0:j1]), torch.nan_to_num(v3[:, j0:j1])\n"
                     "s = (q_i[:, :, :, None] * k_tile[:, None, :, :]).sum(2) if future else q_i @ k_tile\n"
                     "if is_causal and j1 - 1 > n_k - n_q + i0:\n"
                     "    s.masked_fill_(~_causal_tile_mask(i0, i1, j0, j1, n_q, n_k, q.device), float('-inf'))"),
                    ("acc.mul_(alpha[..., None]).baddbmm_(p, v3[:, j0:j1])",
                     "acc.mul_(alpha[..., None]).add_((p[..., None] * v_tile[:, None]).sum(2) if future else p @ v_tile)")]}),
    # Triton: the old test counted launches and banned torch.matmul inside the worker
    "triton_torch_fallback_with_a_captured_matmul": dict(
        exercise="flash_attention_triton", fails=TRITON_FAILS, all_fail=True,
        edits={FT: [(TRITON_HOST,
                     "    o = _torch_attention(q, k, v, is_causal)\n"
                     "    lse = torch.zeros(q.shape[:3])\n"
                     "    _flash_forward_kernel[(1, 1)](q, k, v, o, lse, 0, 0, 1.0, 0, 0, 0, 0, 0, 0, 0, 0, 0, "
                     "IS_CAUSAL=False, HEAD_DIM=16, BLOCK_M=16, BLOCK_N=16)  # a launch that writes nothing (n_q = 0)\n"
                     "    return o, lse\n"),
                    ("import triton.language as tl\n", "import triton.language as tl\n" + TORCH_ATTENTION)]}),
    "triton_host_answer_copied_by_the_kernel": dict(
        exercise="flash_attention_triton", fails=TRITON_FAILS, all_fail=True,
        edits={FT: [(TRITON_HOST,
                     "    answer = _torch_attention(q, k, v, is_causal).contiguous()\n"
                     "    o = torch.empty_like(answer)\n"
                     "    _copy_kernel[(1,)](answer, o, answer.numel(), BLOCK=triton.next_power_of_2(answer.numel()))\n"
                     "    return o, torch.zeros(q.shape[:3])\n"),
                    ("import triton.language as tl\n", "import triton.language as tl\n" + TORCH_ATTENTION + COPY_KERNEL)]}),
    # the backward: gradients by torch autograd on the host, copied into new buffers by a kernel
    "triton_backward_answer_copied_by_the_kernel": dict(
        exercise="flash_attention_triton", fails=["triton_backward"],
        edits={FT: [(TRITON_BACKWARD,
                     TRITON_BACKWARD
                     + "        with torch.enable_grad():\n"
                       "            leaves = [t.detach().requires_grad_(True) for t in (q, k, v)]\n"
                       "            grads = torch.autograd.grad(_torch_attention(*leaves, ctx.is_causal), leaves, grad_o)\n"
                       "        outs = []\n"
                       "        for answer in grads:\n"
                       "            answer = answer.contiguous()\n"
                       "            outs.append(torch.empty_like(answer))\n"
                       "            _copy_kernel[(1,)](answer, outs[-1], answer.numel(), "
                       "BLOCK=triton.next_power_of_2(answer.numel()))\n"
                       "        return (*outs, None)\n"),
                    ("import triton.language as tl\n", "import triton.language as tl\n" + TORCH_ATTENTION + COPY_KERNEL)]}),
    "triton_kernel_calls_torch_in_the_interpreter": dict(
        exercise="flash_attention_triton", fails=TRITON_FAILS, all_fail=True,
        edits={FT: [("    block_m = tl.program_id(0)\n", "    torch.manual_seed(0)\n    block_m = tl.program_id(0)\n")]}),
    # bans: the old tests patched torch's functions during the call
    "softmax_by_getattr": dict(
        exercise="attention", fails=["softmax_is_written_by_hand"],
        edits={A: [("row_max = x.amax(dim=dim, keepdim=True)",
                    "return torch.nan_to_num(_found(x, dim), nan=0.0)  # all -inf rows: 0"),
                   ("def softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:",
                    "_found = getattr(torch, 'soft' + 'max')  # at import, before any runtime ban\n\n\n"
                    "def softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:")]}),
    "layernorm_captured_at_import": dict(
        exercise="layers", fails=["layernorm_is_written_by_hand"],
        # F.layer_norm's float64 weight gradient on small-variance rows is 9e-14 off, beyond
        # today's 6.6e-15: the validity issue's false fail, not this attack's doing
        also_fails=["norm_gradients[LayerNorm]"],
        edits={L: [("return (normed * self.weight + self.bias).to(x.dtype)",
                    "return _layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)[0]"),
                   ("import torch\n", "import torch\n\n_layer_norm = torch.native_layer_norm  # not a banned name at run time\n")]}),
    "cache_grows_with_a_cat_captured_at_import": dict(
        exercise="kv_cache", fails=["cache_is_preallocated"],
        # grows by concatenation, then copies back so that the views share one storage
        edits={K: [("return k_buffer[:, :, :start + new], v_buffer[:, :, :start + new]",
                    "k_buffer[:, :, :start + new] = _join([k_buffer[:, :, :start].clone(), k], dim=2)\n"
                    "        v_buffer[:, :, :start + new] = _join([v_buffer[:, :, :start].clone(), v], dim=2)\n"
                    "        return k_buffer[:, :, :start + new], v_buffer[:, :, :start + new]"),
                   ("import torch\n", "import torch\n\n_join = torch.cat  # taken before any counting patch\n")]}),
    # the cache in the model: the old tests patched update() and hooked forward
    "generate_reruns_the_prompt_past_the_hook": dict(
        exercise="kv_cache", fails=["generation_feeds_one_token_per_step[cache]"],
        edits={K: [("logits = model(step_input if use_cache else out, cache=cache)[:, -1]  # (b, vocab)",
                    "model(step_input if use_cache else out, cache=cache)  # what a hook on the model sees\n"
                    "        logits = type(model).forward(model, out)[:, -1]  # what is used: no hook sees it")]}),
    "model_keeps_its_own_past": dict(
        exercise="kv_cache", fails=["cached_step_reads_the_cache", "cache_holds_kv_heads"],
        edits={G: [("        b, s = idx.shape\n        past = cache.seq_len if cache is not None else 0\n",
                    "        b, s = idx.shape\n        past = cache.seq_len if cache is not None else 0\n"
                    "        if cache is not None:  # recompute from tokens kept here, write the cache for show\n"
                    "            seen = _SEEN.setdefault(id(cache), idx[:, :0])\n"
                    "            _SEEN[id(cache)] = full = torch.cat([seen, idx], dim=1)\n"
                    "            for i, block in enumerate(self.blocks):\n"
                    "                block(self.tok_emb(idx), positions=torch.arange(past, past + s), cache=cache.layer(i))\n"
                    "            return type(self).forward(self, full)[:, -s:]\n"),
                   ("import torch\n", "import torch\n\n_SEEN = {}\n")]}),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", ATTACKS)
def test_forging_a_measurement_gains_nothing(tmp_path, name, solutions_report):
    case = ATTACKS[name]
    folder = materialize(tmp_path, name, case["edits"])
    proc, report = run_grader(folder, "--exercise", case["exercise"])
    assert proc.returncode == 0, proc.stderr
    by_name = results(report)
    attacked = [t for n, t in by_name.items() if any(n.startswith(p) for p in case["fails"])]
    assert attacked, f"no test named {case['fails']}"
    scored = [t["name"] for t in attacked if t["points"] > 0]
    assert not scored, f"{name} still scores on {scored}"
    if not case.get("all_fail"):  # the rest of the reference still scores: the attack is all that changed
        others = [t for n, t in by_name.items()
                  if t not in attacked and not any(n.startswith(p) for p in case.get("also_fails", []))]
        assert others and all(t["status"] == "passed" for t in others), \
            [(t["name"], t["message"][:200]) for t in others if t["status"] != "passed"]
