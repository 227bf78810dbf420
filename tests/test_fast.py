"""Fast training path: sparse embedding rows, lazy row Adam, label-only loss, packing."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from lingotune.data.batches import collate_packed, pack_examples
from lingotune.fast import LazyRowAdam, SparseEmbedding, install_sparse_embedding, remove_sparse_embedding
from lingotune.models import untie

VOCAB, HIDDEN = 128, 32


def label_only_loss(model, ids, mask, labels, position_ids=None):
    """(mean loss, label tokens) through the loop's own loss with label-only logits."""
    from lingotune.losses import CausalLM

    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels, "position_ids": position_ids}
    loss = CausalLM()
    n = loss.count(batch)
    return loss(model, batch, label_only=True) / n, n


def batches(n: int, seed: int = 1, high: int = 64, shape=(2, 12)):
    """Ids only from [3, high): rows >= high are never touched."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, high, shape, generator=g) for _ in range(n)]


def lm_batch(ids: torch.Tensor):
    labels = ids.clone()
    labels[:, :4] = -100  # a "prompt" without labels
    return ids, torch.ones_like(ids), labels


def reference_lazy_adam(weight, batch_ids, grads, lr, betas, eps, wd):
    """The documented semantics, row by row in float64."""
    w = weight.double().clone()
    m, v, t = {}, {}, {}
    b1, b2 = betas
    for ids, g in zip(batch_ids, grads):
        for i, r in enumerate(ids.tolist()):
            gr = g[i].double()
            t[r] = t.get(r, 0) + 1
            m[r] = b1 * m.get(r, torch.zeros_like(gr)) + (1 - b1) * gr
            v[r] = b2 * v.get(r, torch.zeros_like(gr)) + (1 - b2) * gr * gr
            w[r] *= 1 - lr * wd
            mhat, vhat = m[r] / (1 - b1 ** t[r]), v[r] / (1 - b2 ** t[r])
            w[r] -= lr * mhat / (vhat.sqrt() + eps)
    return w


def train_sparse(model, steps, lr=1e-2, wd=0.1):
    untie(model)
    sparse = install_sparse_embedding(model)
    opt = LazyRowAdam(sparse, lr=lr, weight_decay=wd)
    seen_ids, seen_grads = [], []
    for ids in batches(steps):
        loss, _ = label_only_loss(model, *lm_batch(ids))
        loss.backward()
        seen_ids.append(sparse.unique_ids.clone())
        seen_grads.append(sparse.rows.grad.clone())
        opt.step()
        opt.zero_grad()
    return sparse, opt, seen_ids, seen_grads


def test_untouched_rows_bit_identical_and_touched_match_reference(tiny_llama):
    before = tiny_llama.get_input_embeddings().weight.detach().clone()
    sparse, opt, ids, grads = train_sparse(tiny_llama, steps=5)
    after = sparse.weight.detach()
    touched = torch.unique(torch.cat(ids))
    untouched = torch.ones(VOCAB, dtype=torch.bool)
    untouched[touched] = False
    assert untouched.sum() >= VOCAB - 64
    assert torch.equal(after[untouched], before[untouched])
    assert not torch.equal(after[touched], before[touched])
    ref = reference_lazy_adam(before, ids, grads, lr=1e-2, betas=(0.9, 0.999), eps=1e-8, wd=0.1)
    torch.testing.assert_close(after[touched].double(), ref[touched], rtol=1e-5, atol=1e-6)
    # a row touched in only some steps has its own step count
    counts = torch.bincount(torch.cat(ids), minlength=VOCAB)
    st = opt.state[sparse.weight]
    assert sorted(st["ids"].tolist()) == touched.tolist()
    assert {int(i): int(s) for i, s in zip(st["ids"], st["step"])} == {int(r): int(counts[r]) for r in touched}
    assert len(set(counts[touched].tolist())) > 1  # the test does exercise different counts


def test_all_rows_touched_equals_torch_adamw():
    torch.manual_seed(0)
    emb = torch.nn.Embedding(6, 4)
    dense = torch.nn.Parameter(emb.weight.detach().clone())
    sparse = SparseEmbedding(emb)
    opt, ref = LazyRowAdam(sparse, lr=0.05, weight_decay=0.01), torch.optim.AdamW([dense], lr=0.05, weight_decay=0.01)
    ids = torch.tensor([[0, 1, 2], [3, 4, 5]])
    for k in range(4):
        (sparse(ids).pow(2).sum() * (k + 1)).backward()
        (torch.nn.functional.embedding(ids, dense).pow(2).sum() * (k + 1)).backward()
        opt.step(), ref.step()
        opt.zero_grad(), ref.zero_grad()
    torch.testing.assert_close(sparse.weight, dense.detach(), rtol=1e-6, atol=1e-7)


def test_gathered_gradient_equals_dense_gradient(tiny_llama):
    untie(tiny_llama)
    dense_model = copy.deepcopy(tiny_llama)
    ids = batches(1)[0]
    dense_model.get_input_embeddings().weight.requires_grad_(True)
    dense_model(*lm_batch(ids)[:2], labels=lm_batch(ids)[2]).loss.backward()
    dense_grad = dense_model.get_input_embeddings().weight.grad
    sparse = install_sparse_embedding(tiny_llama)
    tiny_llama(*lm_batch(ids)[:2], labels=lm_batch(ids)[2]).loss.backward()
    assert sparse.rows.grad.shape == (len(sparse.unique_ids), HIDDEN)
    torch.testing.assert_close(sparse.rows.grad, dense_grad[sparse.unique_ids], rtol=1e-5, atol=1e-7)
    mask = torch.ones(VOCAB, dtype=torch.bool)
    mask[sparse.unique_ids] = False
    assert torch.count_nonzero(dense_grad[mask]) == 0
    assert sparse.weight.grad is None


def test_accumulated_microbatches_sum_gradients():
    emb = torch.nn.Embedding(10, 3)
    sparse = SparseEmbedding(emb)
    sparse(torch.tensor([1, 2, 2])).sum().backward()
    sparse(torch.tensor([2, 5])).sum().backward()
    ids, grad = sparse.gathered_grad()
    assert ids.tolist() == [1, 2, 5]
    assert grad[:, 0].tolist() == [1.0, 3.0, 1.0]


def test_state_dict_round_trip_resumes_identically(tiny_llama):
    untie(tiny_llama)
    other = copy.deepcopy(tiny_llama)
    sparse, opt, _, _ = train_sparse(tiny_llama, steps=3)
    saved_weight = sparse.weight.detach().clone()
    saved = copy.deepcopy(opt.state_dict())
    snapshot = copy.deepcopy(saved)
    # resume in a fresh model/optimizer, with a scheduler on top
    with torch.no_grad():
        other.get_input_embeddings().weight.copy_(saved_weight)
    sparse2 = install_sparse_embedding(other)
    opt2 = LazyRowAdam(sparse2, lr=1e-2, weight_decay=0.1)
    opt2.load_state_dict(saved)
    scheds = [torch.optim.lr_scheduler.LambdaLR(o, lambda s: 1.0 / (1 + s)) for o in (opt, opt2)]
    for ids in batches(3, seed=7, high=100):
        for model, o, s in ((tiny_llama, opt, scheds[0]), (other, opt2, scheds[1])):
            label_only_loss(model, *lm_batch(ids))[0].backward()
            o.step(), s.step(), o.zero_grad()
    assert torch.equal(sparse.weight, sparse2.weight)
    for key in ("ids", "step", "exp_avg", "exp_avg_sq"):
        assert torch.equal(opt.state[sparse.weight][key], opt2.state[sparse2.weight][key])
    assert opt2.param_groups[0]["lr"] == pytest.approx(1e-2 / 4)
    assert torch.equal(saved["state"][0]["exp_avg"], snapshot["state"][0]["exp_avg"])  # loading copied the state


def test_state_memory_proportional_to_touched_rows(tiny_llama):
    sparse, opt, ids, _ = train_sparse(tiny_llama, steps=2)
    n = len(torch.unique(torch.cat(ids)))
    assert n < VOCAB / 2
    assert opt.state_numel() == n * (2 * HIDDEN + 2)


def test_label_only_loss_equals_full_loss_and_frozen_head_gets_no_grad(tiny_llama):
    untie(tiny_llama)
    ids, mask, labels = lm_batch(batches(1)[0])
    mask[1, -3:] = 0
    labels[1, -3:] = -100
    full = tiny_llama(input_ids=ids, attention_mask=mask, labels=labels).loss
    loss, n = label_only_loss(tiny_llama, ids, mask, labels)
    assert n == int((labels[:, 1:] != -100).sum())
    torch.testing.assert_close(loss, full, rtol=1e-5, atol=1e-6)
    head = tiny_llama.get_output_embeddings()
    head.weight.requires_grad_(False)
    tiny_llama.model.norm.weight.requires_grad_(True)
    label_only_loss(tiny_llama, ids, mask, labels)[0].backward()
    assert head.weight.grad is None
    assert tiny_llama.model.norm.weight.grad is not None


def test_works_with_peft_and_bf16_autocast(tiny_llama):
    peft = pytest.importorskip("peft")
    untie(tiny_llama)
    model = peft.get_peft_model(tiny_llama, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    sparse = install_sparse_embedding(model)
    assert model.get_base_model().get_input_embeddings() is sparse
    opt = LazyRowAdam(sparse, lr=1e-2)
    before = sparse.weight.detach().clone()
    ids, mask, labels = lm_batch(batches(1)[0])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        full = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss, _ = label_only_loss(model, ids, mask, labels)
    assert math.isclose(loss.item(), full.item(), rel_tol=2e-2)
    loss.backward()
    assert sparse.rows.dtype == torch.float32 and sparse.rows.grad.dtype == torch.float32
    opt.step()
    assert sparse.weight.dtype == torch.float32
    assert not torch.equal(sparse.weight[sparse.unique_ids], before[sparse.unique_ids])
    lora = [p for n, p in model.named_parameters() if "lora_" in n]
    assert lora and all(p.grad is not None for p in lora)
    plain = remove_sparse_embedding(model)
    assert isinstance(plain, torch.nn.Embedding) and type(plain) is not SparseEmbedding
    assert model.get_base_model().get_input_embeddings() is plain
    assert torch.equal(plain.weight, sparse.weight)


def test_tied_model_is_refused(tiny_llama):
    with pytest.raises(ValueError, match="untie"):
        install_sparse_embedding(tiny_llama)


def test_no_grad_forward_is_plain_lookup(tiny_llama):
    untie(tiny_llama)
    ids = batches(1)[0]
    with torch.no_grad():
        want = tiny_llama(ids).logits
        install_sparse_embedding(tiny_llama)
        got = tiny_llama(ids).logits
    assert torch.equal(want, got)
    assert tiny_llama.get_input_embeddings().pending == []


def test_packed_row_logits_equal_separate_runs(tiny_llama):
    g = torch.Generator().manual_seed(3)
    seqs = [torch.randint(3, VOCAB, (n,), generator=g).tolist() for n in (7, 5, 9, 4)]
    examples = [{"input_ids": s, "labels": s} for s in seqs]
    rows = pack_examples(examples, max_len=16)
    assert [r["seq_lens"] for r in rows] == [[7, 5, 4], [9]]
    assert rows[0]["position_ids"] == list(range(7)) + list(range(5)) + list(range(4))
    assert rows[0]["labels"][7] == -100 and rows[0]["labels"][8] == seqs[1][1]
    batch = collate_packed(rows, pad_id=0)
    assert batch["input_ids"].shape == (2, 16) and batch["attention_mask"] is None
    with torch.no_grad():
        packed = tiny_llama(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
        where = {0: (0, 0), 1: (0, 7), 3: (0, 12), 2: (1, 0)}
        for i, s in enumerate(seqs):
            alone = tiny_llama(input_ids=torch.tensor([s])).logits[0]
            row, start = where[i]
            torch.testing.assert_close(packed[row, start:start + len(s)], alone, rtol=1e-5, atol=1e-5)
        # without the position restart the second sequence would see the first: logits differ
        wrong = tiny_llama(input_ids=batch["input_ids"][:1]).logits[0, 7:12]
        assert not torch.allclose(wrong, tiny_llama(input_ids=torch.tensor([seqs[1]])).logits[0], atol=1e-3)
    # the packed loss equals the mean over the separate sequences' label tokens
    loss, n = label_only_loss(tiny_llama, batch["input_ids"], None, batch["labels"], batch["position_ids"])
    assert n == sum(len(s) - 1 for s in seqs)
    total = sum(tiny_llama(input_ids=torch.tensor([s]), labels=torch.tensor([s])).loss * (len(s) - 1) for s in seqs)
    torch.testing.assert_close(loss, total / n, rtol=1e-5, atol=1e-6)


def test_pack_examples_rejects_bad_input():
    with pytest.raises(ValueError, match="example 0"):
        pack_examples([{"input_ids": [1, 2], "labels": [1]}], max_len=8)
    rows = pack_examples([{"input_ids": list(range(20)), "labels": list(range(20))}], max_len=8)
    assert len(rows[0]["input_ids"]) == 8


def test_scaled_embedding_of_gemma3_keeps_its_scale():
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    config = Gemma3TextConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=8, tie_word_embeddings=False)
    model = Gemma3ForCausalLM(config)
    ids = torch.randint(0, 64, (2, 6))
    labels = ids.clone()
    want = model(input_ids=ids, labels=labels).loss.detach()
    sparse = install_sparse_embedding(model)
    assert sparse.embed_scale is not None
    loss, _ = label_only_loss(model, ids, None, labels)
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-6)
    assert type(remove_sparse_embedding(model)).__name__ == "Gemma3TextScaledWordEmbedding"


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_packed_loss_is_right_when_the_model_config_uses_a_cache(attn):
    """Real checkpoints ship use_cache=True; a KV cache would silently drop the packed mask. With either attention
    kernel (model.attn_implementation): the loop's packing probe passes, and a packed row's label-only loss equals
    the sum of its examples' losses computed alone."""
    from helpers import tiny_llama_config
    from transformers import LlamaForCausalLM

    from lingotune.train import packing_respected

    torch.manual_seed(0)
    config = tiny_llama_config()
    config._attn_implementation = attn
    model = LlamaForCausalLM(config)
    assert model.config.use_cache and model.config._attn_implementation == attn
    assert packing_respected(model)
    g = torch.Generator().manual_seed(5)
    seqs = [torch.randint(3, VOCAB, (n,), generator=g).tolist() for n in (6, 9, 5)]
    batch = collate_packed(pack_examples([{"input_ids": s, "labels": s} for s in seqs], max_len=32), pad_id=0)
    loss, n = label_only_loss(model, batch["input_ids"], None, batch["labels"], batch["position_ids"])
    total = sum(model(input_ids=torch.tensor([s]), labels=torch.tensor([s])).loss * (len(s) - 1) for s in seqs)
    torch.testing.assert_close(loss, total / n, rtol=1e-5, atol=1e-6)


def test_low_precision_weight_keeps_fp32_master_rows_so_small_updates_accumulate():
    """A bf16 embedding (model.dtype: bfloat16) trained at a small LR: without fp32 master rows
    every update would round away; with them the rows follow the fp32 run and get its rounding."""
    torch.manual_seed(0)
    base = torch.nn.Embedding(8, 4)
    base.weight.data = 1.0 + torch.rand(8, 4)  # values in [1, 2): bf16 spacing 2**-7
    ids = torch.tensor([[1, 2, 3]])
    runs, start = {}, base.weight.data.to(torch.bfloat16)
    for dtype in (torch.float32, torch.bfloat16):
        emb = torch.nn.Embedding(8, 4)
        emb.weight.data = start.to(dtype).clone()  # the same (bf16-exact) start
        sparse = SparseEmbedding(emb)
        opt = LazyRowAdam(sparse, lr=1e-3)  # 1e-3 per step is below half the spacing (3.9e-3)
        for _ in range(20):
            sparse(ids).float().sum().backward()
            opt.step()
            opt.zero_grad()
        runs[dtype] = (sparse.weight.detach().clone(), opt)
    w32, w16 = runs[torch.float32][0], runs[torch.bfloat16][0]
    assert not torch.equal(w16[1:4], start[1:4])  # the updates accumulated and show up
    assert torch.equal(w16, w32.to(torch.bfloat16))  # = the fp32 run, rounded
    st16 = runs[torch.bfloat16][1].state[runs[torch.bfloat16][1].param_groups[0]["params"][0]]
    assert "master" in st16 and st16["master"].dtype == torch.float32 and len(st16["master"]) == 3
    st32 = runs[torch.float32][1].state[runs[torch.float32][1].param_groups[0]["params"][0]]
    assert "master" not in st32  # fp32 weights need no copy


@pytest.mark.parametrize("cap", [None, 3.0])
@pytest.mark.parametrize("chunk_rows", [1, 5, 1000])
def test_head_nll_in_chunks_equals_the_plain_head_and_cross_entropy(monkeypatch, cap, chunk_rows):
    """HeadNLL (the label-only head in chunks of rows, its hidden-state gradient computed in the forward) gives
    the NLLs, hidden-state and head gradients of `linear -> (softcap) -> cross_entropy(reduction='none')`,
    for a non-uniform upstream gradient (as DPO/ORPO give per token), whatever the chunk size."""
    import lingotune.losses as losses

    vocab = 40
    monkeypatch.setattr(losses, "CHUNK_BYTES", 4 * vocab * chunk_rows)
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(13, 16, generator=g, dtype=torch.float64).float()
    weight = torch.randn(vocab, 16, generator=g).float()
    target = torch.randint(0, vocab, (13,), generator=g)
    upstream = torch.rand(13, generator=g)
    runs = []
    for chunked in (True, False):
        h, w = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
        if chunked:
            nll = losses.HeadNLL.apply(h, w, target, cap)
        else:
            z = h @ w.T
            z = torch.tanh(z / cap) * cap if cap else z
            nll = torch.nn.functional.cross_entropy(z, target, reduction="none")
        (nll * upstream).sum().backward()
        runs.append((nll.detach(), h.grad, w.grad))
    for got, want in zip(*runs):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_head_nll_under_bf16_autocast_matches_the_autocast_linear(monkeypatch):
    """Under bf16 autocast the chunked head multiplies in bf16 as nn.Linear would, so its NLLs and gradients
    stay within bf16 rounding of the plain path's; a frozen head gets no gradient."""
    import lingotune.losses as losses

    monkeypatch.setattr(losses, "CHUNK_BYTES", 4 * 64 * 4)
    g = torch.Generator().manual_seed(4)
    hidden, weight = torch.randn(10, 32, generator=g), torch.randn(64, 32, generator=g)
    target = torch.randint(0, 64, (10,), generator=g)
    runs = []
    for chunked in (True, False):
        h, w = hidden.clone().requires_grad_(True), weight.clone()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if chunked:
                nll = losses.HeadNLL.apply(h, w, target, None)
            else:
                nll = torch.nn.functional.cross_entropy((h @ w.T).float(), target, reduction="none")
        nll.sum().backward()
        assert w.grad is None
        runs.append((nll.detach(), h.grad))
    for got, want in zip(*runs):
        torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)



def test_row_gradient_is_the_same_bit_for_bit_at_any_thread_count():
    """Repeated ids sum their gradients in a fixed order. (Advanced indexing's backward adds them with parallel
    float atomics on CPU once the gradient has 32,768+ elements and 2+ threads: the order, and so the last bits,
    changed from run to run, and DParT's stage 1 was not reproducible.)"""
    torch.manual_seed(0)
    emb = SparseEmbedding(torch.nn.Embedding(16, 64))
    ids = torch.randint(0, 16, (8, 512))  # 262,144 gradient elements, each row summed from ~256 positions
    upstream = torch.randn(8, 512, 64)
    threads = torch.get_num_threads()

    def grad(n: int) -> torch.Tensor:
        torch.set_num_threads(n)
        try:
            emb.clear()
            (emb(ids) * upstream).sum().backward()
            return emb.rows.grad.clone()
        finally:
            torch.set_num_threads(threads)

    serial = grad(1)
    assert all(torch.equal(grad(2), serial) for _ in range(5))
    assert torch.allclose(serial, torch.zeros(16, 64).index_add_(0, ids.flatten(), upstream.reshape(-1, 64)), atol=1e-4)
