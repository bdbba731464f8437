//! What runs on the GPU but can be checked on the CPU: the packed step inputs (eager and the
//! fixed decode-graph form with its padding), which steps the decode graphs take, the
//! synthetic models' shapes, and a synthetic model's forward on the CPU.

use kiln_models::model::{CausalLm, ForwardBatch};
use kiln_models::synth::{param_count, preset, PRESETS};
use kiln_runtime::attention::SeqAttn;
use kiln_runtime::model::graphs::is_decode;
use kiln_runtime::model::step::{Heads, StepInputs};
use kiln_runtime::model::KvCache;
use kiln_runtime::DType;
use kiln_runtime::{Device, Tensor};

fn cache(blocks: usize) -> KvCache {
    let t = || Tensor::zeros(&Device::Cpu, DType::F32, blocks * 16, 8).unwrap();
    KvCache { k: vec![t()], v: vec![t()], block_size: 16, num_blocks: blocks, fp8: None }
}

const HEADS: Heads = Heads { n_heads: 2, n_kv_heads: 1, head_dim: 8, per_head_rows: false };

#[test]
fn step_inputs_pack_the_batch() {
    let table = [2u32, 0];
    let seqs = [
        SeqAttn { q_start: 0, q_len: 2, ctx_len: 20, block_table: &table },
        SeqAttn { q_start: 2, q_len: 1, ctx_len: 3, block_table: &table[1..] },
    ];
    let batch = ForwardBatch {
        tokens: &[5, 6, 7],
        positions: &[18, 19, 2],
        slots: &[50, 51, 2],
        seqs: &seqs,
        logits_rows: &[1, 2],
    };
    let inp = StepInputs::new(&Device::Cpu, &batch, &cache(4), HEADS).unwrap();
    let v = |t: &Tensor| t.to_host::<i32>().unwrap();
    assert_eq!(
        (v(&inp.ids), v(&inp.pos), v(&inp.slots), v(&inp.logits_rows)),
        (vec![5, 6, 7], vec![18, 19, 2], vec![50, 51, 2], vec![1, 2])
    );
    assert!(!inp.all_rows);
}

#[test]
fn decode_buffers_are_refreshed_in_place_with_padding() {
    let kv = cache(8);
    let mut inp = StepInputs::for_decode(&Device::Cpu, 4, 4, &kv, HEADS).unwrap();
    let table = [3u32, 1];
    let seqs = [
        SeqAttn { q_start: 0, q_len: 1, ctx_len: 17, block_table: &table },
        SeqAttn { q_start: 1, q_len: 1, ctx_len: 2, block_table: &table[1..] },
    ];
    let batch =
        ForwardBatch { tokens: &[9, 8], positions: &[16, 1], slots: &[16, 17], seqs: &seqs, logits_rows: &[0, 1] };
    let ids_before = inp.ids.storage().clone();
    inp.refresh_decode(&Device::Cpu, &batch, &kv).unwrap();
    assert!(std::sync::Arc::ptr_eq(&ids_before, inp.ids.storage()), "the same buffers (a graph reads them)");
    let v = |t: &Tensor| t.to_host::<i32>().unwrap();
    assert_eq!(v(&inp.ids), vec![9, 8, 0, 0]);
    assert_eq!(v(&inp.pos), vec![16, 1, 0, 0]);
    assert_eq!(v(&inp.slots), vec![16, 17, -1, -1], "padding rows write no K/V");
    assert_eq!(v(&inp.logits_rows), vec![0, 1, 2, 3]);
    // More sequences than the buffers hold, or a prefill, are refused.
    let five = [9u32; 5];
    let many: Vec<SeqAttn> =
        (0..5).map(|i| SeqAttn { q_start: i, q_len: 1, ctx_len: 1, block_table: &table }).collect();
    let big =
        ForwardBatch { tokens: &five, positions: &[0; 5], slots: &[0; 5], seqs: &many, logits_rows: &[0, 1, 2, 3, 4] };
    assert!(inp.refresh_decode(&Device::Cpu, &big, &kv).is_err());
}

/// A model with per-head q/k norms gets the step as one row per (token, head): each row's
/// position, and where it goes — its query-buffer row, or its cache row `slot * n_kv + h` — with
/// `-1` elsewhere and for a padding row of the decode form (it writes no K/V).
#[test]
fn per_head_rows_route_each_head() {
    let heads = Heads { per_head_rows: true, ..HEADS }; // 2 query heads, 1 kv head: 4 rows a token
    let table = [0u32];
    let seqs = [SeqAttn { q_start: 0, q_len: 2, ctx_len: 2, block_table: &table }];
    let batch = ForwardBatch { tokens: &[5, 6], positions: &[7, 8], slots: &[3, 9], seqs: &seqs, logits_rows: &[1] };
    let inp = StepInputs::new(&Device::Cpu, &batch, &cache(4), heads).unwrap();
    let v = |t: &Tensor| t.to_host::<i32>().unwrap();
    let hr = inp.head_rows.as_ref().unwrap();
    assert_eq!(v(&hr.pos), vec![7, 7, 7, 7, 8, 8, 8, 8]);
    assert_eq!(v(&hr.q_row), vec![0, 1, -1, -1, 2, 3, -1, -1]);
    assert_eq!(v(&hr.k_row), vec![-1, -1, 3, -1, -1, -1, 9, -1]);
    assert_eq!(v(&hr.v_row), vec![-1, -1, -1, 3, -1, -1, -1, 9]);
    assert!(StepInputs::new(&Device::Cpu, &batch, &cache(4), HEADS).unwrap().head_rows.is_none());
    // Decode buffers: padding rows (slot -1) write no K/V.
    let kv = cache(8);
    let mut inp = StepInputs::for_decode(&Device::Cpu, 2, 4, &kv, heads).unwrap();
    let one = [SeqAttn { q_start: 0, q_len: 1, ctx_len: 5, block_table: &table }];
    let b = ForwardBatch { tokens: &[1], positions: &[4], slots: &[4], seqs: &one, logits_rows: &[0] };
    inp.refresh_decode(&Device::Cpu, &b, &kv).unwrap();
    let hr = inp.head_rows.as_ref().unwrap();
    assert_eq!(v(&hr.pos), vec![4, 4, 4, 4, 0, 0, 0, 0]);
    assert_eq!(v(&hr.k_row), vec![-1, -1, 4, -1, -1, -1, -1, -1]);
    assert_eq!(v(&hr.v_row), vec![-1, -1, -1, 4, -1, -1, -1, -1]);
}

/// An FP8 cache's steps write their new K and V to staging rows, one per token (`-1` where the
/// token writes nothing), per head too; a cache of the compute dtype gets none.
#[test]
fn fp8_caches_get_staging_rows() {
    let mut fp8 = cache(4);
    fp8.fp8 = Some(vec![kiln_runtime::attention::KvScale { k: 1.0, v: 1.0 }]);
    let table = [0u32];
    let seqs = [SeqAttn { q_start: 0, q_len: 2, ctx_len: 2, block_table: &table }];
    let batch = ForwardBatch { tokens: &[5, 6], positions: &[7, 8], slots: &[3, 9], seqs: &seqs, logits_rows: &[1] };
    let v = |t: &Tensor| t.to_host::<i32>().unwrap();
    assert!(StepInputs::new(&Device::Cpu, &batch, &cache(4), HEADS).unwrap().kv_stage.is_none());
    let inp = StepInputs::new(&Device::Cpu, &batch, &fp8, HEADS).unwrap();
    let st = inp.kv_stage.as_ref().unwrap();
    assert_eq!((v(&st.slots), st.head_rows.is_none()), (vec![0, 1], true));
    assert_eq!(v(&inp.slots), vec![3, 9], "the pools' slots are unchanged");
    let heads = Heads { per_head_rows: true, ..HEADS }; // 4 rows a token: q, q, k, v
    let inp = StepInputs::new(&Device::Cpu, &batch, &fp8, heads).unwrap();
    let st = inp.kv_stage.as_ref().unwrap();
    let [kr, vr] = st.head_rows.as_ref().unwrap();
    assert_eq!((v(kr), v(vr)), (vec![-1, -1, 0, -1, -1, -1, 1, -1], vec![-1, -1, -1, 0, -1, -1, -1, 1]));
    assert_eq!(v(&inp.head_rows.as_ref().unwrap().k_row), vec![-1, -1, 3, -1, -1, -1, 9, -1]);
    // Decode buffers: a padding row stages nothing.
    let mut inp = StepInputs::for_decode(&Device::Cpu, 2, 4, &fp8, heads).unwrap();
    let one = [SeqAttn { q_start: 0, q_len: 1, ctx_len: 5, block_table: &table }];
    let b = ForwardBatch { tokens: &[1], positions: &[4], slots: &[4], seqs: &one, logits_rows: &[0] };
    inp.refresh_decode(&Device::Cpu, &b, &fp8).unwrap();
    let st = inp.kv_stage.as_ref().unwrap();
    assert_eq!(v(&st.slots), vec![0, -1]);
    assert_eq!(v(&st.head_rows.as_ref().unwrap()[0]), vec![-1, -1, 0, -1, -1, -1, -1, -1]);
}

#[test]
fn decode_graphs_take_one_token_steps_with_every_row() {
    let table = [0u32];
    let one = [SeqAttn { q_start: 0, q_len: 1, ctx_len: 5, block_table: &table }];
    let b = ForwardBatch { tokens: &[1], positions: &[4], slots: &[4], seqs: &one, logits_rows: &[0] };
    assert!(is_decode(&b));
    let prefill = [SeqAttn { q_start: 0, q_len: 2, ctx_len: 2, block_table: &table }];
    let b = ForwardBatch { tokens: &[1, 2], positions: &[0, 1], slots: &[0, 1], seqs: &prefill, logits_rows: &[1] };
    assert!(!is_decode(&b));
    let b = ForwardBatch { tokens: &[1], positions: &[4], slots: &[4], seqs: &one, logits_rows: &[] };
    assert!(!is_decode(&b), "a step without logits is not the captured shape");
}

#[test]
fn presets_have_the_real_models_shapes() {
    for p in PRESETS {
        assert!(preset(p).is_some());
    }
    assert!(preset("gpt-5").is_none());
    // The parameter counts the published models report.
    assert_eq!(param_count(&preset("llama3-8b").unwrap()), 8_030_261_248);
    assert_eq!(param_count(&preset("smollm2-135m").unwrap()), 134_515_008);
}

#[test]
fn a_synthetic_model_runs_on_the_cpu() {
    let mut cfg = preset("smollm2-135m").unwrap();
    cfg.num_hidden_layers = 2;
    let m = kiln_models::llama::random(cfg, &Device::Cpu, DType::F32, 1).unwrap();
    let (logits, tokens) = kiln_models::model_check::greedy(&m, &[1, 2, 3, 4], 3).unwrap();
    assert_eq!(logits.len(), m.info().vocab_size);
    assert!(logits.iter().all(|x| x.is_finite()));
    assert_eq!(tokens.len(), 3);
    let again = kiln_models::llama::random(preset_2_layers(), &Device::Cpu, DType::F32, 1).unwrap();
    assert_eq!(
        kiln_models::model_check::greedy(&again, &[1, 2, 3, 4], 3).unwrap().1,
        tokens,
        "seeded: the same weights"
    );
}

fn preset_2_layers() -> kiln_models::config::LlamaConfig {
    let mut cfg = preset("smollm2-135m").unwrap();
    cfg.num_hidden_layers = 2;
    cfg
}

#[test]
fn a_written_synthetic_checkpoint_is_the_synthetic_model() {
    let dir = std::env::temp_dir().join(format!("kiln-synth-{}", std::process::id()));
    let cfg = preset_2_layers();
    let files = kiln_models::synth::write_hf_dir(&cfg, DType::F32, 5, &dir).unwrap();
    assert_eq!(files.len(), 2);
    let loaded = kiln_models::loader::load_weights_only(&dir, &Device::Cpu, DType::F32).unwrap();
    let made = kiln_models::llama::random(cfg, &Device::Cpu, DType::F32, 5).unwrap();
    let prompt = [7, 8, 9, 10, 11];
    let (a, ta) = kiln_models::model_check::greedy(loaded.as_ref(), &prompt, 4).unwrap();
    let (b, tb) = kiln_models::model_check::greedy(&made, &prompt, 4).unwrap();
    assert_eq!(a, b, "same weights, same logits bit for bit");
    assert_eq!(ta, tb);
    std::fs::remove_dir_all(&dir).unwrap();
}
