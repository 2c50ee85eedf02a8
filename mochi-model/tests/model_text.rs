//! Golden tests of the text path against SentencePiece and transformers' T5 encoder.
//!
//! Fixtures come from `tools/make_t5_fixtures.py`: a tiny SentencePiece model (read
//! directly, and also converted to `tokenizer.json` by `tools/convert_tokenizer.py`) and a
//! tiny random T5 encoder.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, IndexOp};
use mochi_model::pipeline::text_encoder::{MAX_TEXT_TOKENS, PromptTokenizer, TextEncoder};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/t5")
}

/// A writable copy of the fixture's `tokenizer/` and `text_encoder/`.
fn fixture_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for sub in ["tokenizer", "text_encoder"] {
        let from = fixtures().join(sub);
        let to = dir.path().join(sub);
        std::fs::create_dir_all(&to).expect("mkdir");
        for entry in std::fs::read_dir(&from).expect("read_dir") {
            let entry = entry.expect("entry");
            std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
        }
    }
    dir
}

#[derive(serde::Deserialize)]
struct Expected {
    prompt: String,
    input_ids: Vec<u32>,
    attention_mask: Vec<u32>,
}

fn expected_tokens() -> Vec<Expected> {
    let text = std::fs::read_to_string(fixtures().join("tokens.json")).expect("tokens.json");
    serde_json::from_str(&text).expect("json")
}

fn assert_matches_reference(tokenizer: &PromptTokenizer) {
    let expected = expected_tokens();
    assert_eq!(expected.len(), 15);
    for case in expected {
        let tokens = tokenizer.encode(&case.prompt).expect("encode");
        assert_eq!(tokens.ids.len(), MAX_TEXT_TOKENS);
        assert_eq!(tokens.ids, case.input_ids, "ids of {:?}", case.prompt);
        assert_eq!(
            tokens.mask(),
            case.attention_mask,
            "mask of {:?}",
            case.prompt
        );
    }
}

#[test]
fn spiece_reader_matches_sentencepiece_ids_and_masks() {
    let path = fixtures().join("tokenizer/spiece.model");
    assert_matches_reference(&PromptTokenizer::from_spiece(&path, 0).expect("tokenizer"));
    assert_matches_reference(&PromptTokenizer::from_spiece(&path, 100).expect("tokenizer"));
}

#[test]
fn converted_tokenizer_json_matches_sentencepiece_ids_and_masks() {
    let path = fixtures().join("tokenizer/tokenizer.json");
    assert_matches_reference(&PromptTokenizer::from_file(&path).expect("tokenizer"));
}

#[test]
fn t5_encoder_matches_reference_on_valid_positions() {
    let mut encoder = TextEncoder::from_model_dir(&fixtures(), &Device::Cpu).expect("encoder");
    let data =
        candle_core::safetensors::load(fixtures().join("encoder_case.safetensors"), &Device::Cpu)
            .expect("fixture");
    let ids: Vec<u32> = data["input_ids"]
        .to_dtype(DType::U32)
        .expect("u32")
        .flatten_all()
        .expect("flat")
        .to_vec1()
        .expect("vec");
    let valid = 6;
    let ours = encoder.encode_ids(&ids[..valid]).expect("encode");
    let want = data["last_hidden_state"]
        .i((.., ..valid, ..))
        .expect("slice");
    let diff = (ours - &want)
        .expect("sub")
        .abs()
        .expect("abs")
        .max_all()
        .expect("max");
    let diff = diff.to_scalar::<f32>().expect("scalar");
    let scale = want
        .abs()
        .expect("abs")
        .max_all()
        .expect("max")
        .to_scalar::<f32>()
        .expect("scalar");
    println!(
        "t5 last_hidden_state max|Δ| {diff:.3e} rel {:.3e}",
        diff / scale
    );
    assert!(diff <= 1e-4, "max |Δ| {diff}");
}

#[test]
fn empty_prompt_has_no_valid_tokens_and_prompts_are_zero_padded() {
    let mut encoder = TextEncoder::from_model_dir(&fixtures(), &Device::Cpu).expect("encoder");
    let empty = encoder.encode("").expect("empty");
    assert_eq!(empty.features.dims(), &[1, MAX_TEXT_TOKENS, 32]);
    let mask_sum = empty
        .mask
        .sum_all()
        .expect("sum")
        .to_scalar::<f32>()
        .expect("scalar");
    assert_eq!(mask_sum, 0.0);

    let cond = encoder
        .encode("A red fox runs through fresh snow at dawn.")
        .expect("prompt");
    let valid = cond
        .mask
        .sum_all()
        .expect("sum")
        .to_scalar::<f32>()
        .expect("scalar") as usize;
    assert_eq!(valid, 28);
    let padded = cond
        .features
        .i((.., valid.., ..))
        .expect("pad")
        .abs()
        .expect("abs");
    assert_eq!(
        padded
            .max_all()
            .expect("max")
            .to_scalar::<f32>()
            .expect("scalar"),
        0.0
    );
    let real = cond
        .features
        .i((.., ..valid, ..))
        .expect("real")
        .abs()
        .expect("abs");
    assert!(
        real.max_all()
            .expect("max")
            .to_scalar::<f32>()
            .expect("scalar")
            > 0.0
    );
}

#[test]
fn spiece_model_alone_is_enough_and_no_tokenizer_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("tokenizer")).expect("mkdir");
    let err = PromptTokenizer::from_model_dir(dir.path()).expect_err("must fail");
    assert!(err.to_string().contains("spiece.model"), "{err}");
    std::fs::copy(
        fixtures().join("tokenizer/spiece.model"),
        dir.path().join("tokenizer/spiece.model"),
    )
    .expect("copy");
    assert_matches_reference(&PromptTokenizer::from_model_dir(dir.path()).expect("tokenizer"));
}

#[test]
fn corrupt_spiece_model_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bytes = std::fs::read(fixtures().join("tokenizer/spiece.model")).expect("read");
    let path = dir.path().join("spiece.model");
    std::fs::write(&path, &bytes[..bytes.len() / 2]).expect("write");
    let err = PromptTokenizer::from_spiece(&path, 100).expect_err("must fail");
    assert!(err.to_string().contains("spiece.model"), "{err}");
}

#[test]
fn prompt_text_path_matches_transformers_on_valid_positions() {
    let mut encoder = TextEncoder::from_model_dir(&fixtures(), &Device::Cpu).expect("encoder");
    let data =
        candle_core::safetensors::load(fixtures().join("encoder_case.safetensors"), &Device::Cpu)
            .expect("fixture");
    let prompt = &expected_tokens()[0].prompt;
    let ours = encoder.encode(prompt).expect("encode");
    let mask: Vec<f32> = ours
        .mask
        .flatten_all()
        .expect("flat")
        .to_vec1()
        .expect("vec");
    let want_mask: Vec<f32> = data["prompt_attention_mask"]
        .flatten_all()
        .expect("flat")
        .to_vec1()
        .expect("vec");
    assert_eq!(mask, want_mask);
    let valid = mask.iter().filter(|m| **m > 0.0).count();
    let got = ours.features.i((.., ..valid, ..)).expect("slice");
    let want = data["prompt_last_hidden_state"]
        .i((.., ..valid, ..))
        .expect("slice");
    let diff = (got - &want)
        .expect("sub")
        .abs()
        .expect("abs")
        .max_all()
        .expect("max")
        .to_scalar::<f32>()
        .expect("scalar");
    let scale = want
        .abs()
        .expect("abs")
        .max_all()
        .expect("max")
        .to_scalar::<f32>()
        .expect("scalar");
    println!(
        "t5 prompt path ({valid} tokens) max|Δ| {diff:.3e} rel {:.3e}",
        diff / scale
    );
    assert!(diff <= 1e-4, "max |Δ| {diff}");
}

#[test]
fn a_t5_config_the_weights_contradict_is_refused_naming_the_field_and_both_values() {
    let dir = fixture_copy();
    let path = dir.path().join("text_encoder/config.json");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("config")).expect("json");
    TextEncoder::from_model_dir(dir.path(), &Device::Cpu).expect("the fixture loads");
    let layers = config["num_layers"].as_u64().expect("num_layers");
    let mut wrong = config.clone();
    wrong["num_layers"] = (layers + 1).into();
    std::fs::write(&path, wrong.to_string()).expect("write");
    let error = TextEncoder::from_model_dir(dir.path(), &Device::Cpu)
        .expect_err("contradicted")
        .to_string();
    let expected = format!(
        "num_layers is {} in the config, the weights have {layers}",
        layers + 1
    );
    assert!(
        error.contains(&expected) && error.contains("contradicts the weights"),
        "{error}"
    );
}

#[test]
fn prompts_are_padded_and_truncated_to_the_transformers_max_sequence_length() {
    let dir = fixture_copy();
    let prompt = "A red fox runs through fresh snow at dawn, looking for a warm place to rest.";
    let mut full = TextEncoder::from_model_dir(dir.path(), &Device::Cpu).expect("encoder");
    assert_eq!(full.tokenizer().max_tokens(), MAX_TEXT_TOKENS);
    let whole = full.tokenizer().encode(prompt).expect("tokens");
    assert!(whole.valid > 6, "the prompt must be longer than the limit");

    std::fs::create_dir_all(dir.path().join("transformer")).expect("mkdir");
    std::fs::write(
        dir.path().join("transformer/config.json"),
        r#"{"max_sequence_length": 6}"#,
    )
    .expect("write");
    let mut short = TextEncoder::from_model_dir(dir.path(), &Device::Cpu).expect("encoder");
    let tokens = short.tokenizer().encode(prompt).expect("tokens");
    assert_eq!(tokens.ids.len(), 6);
    assert_eq!(tokens.valid, 6);
    assert_eq!(&tokens.ids[..5], &whole.ids[..5]);
    assert_eq!(tokens.ids[5], 1, "</s> stays last");
    let encoded = short.encode(prompt).expect("encode");
    assert_eq!(encoded.features.dims(), &[1, 6, 32]);
    assert_eq!(encoded.mask.dims(), &[1, 6]);
    let empty = short.encode("").expect("empty");
    assert_eq!(empty.features.dims(), &[1, 6, 32]);
    drop(full.encode("x").expect("the default still works"));

    std::fs::write(
        dir.path().join("transformer/config.json"),
        r#"{"max_sequence_length": 0}"#,
    )
    .expect("write");
    let error = TextEncoder::from_model_dir(dir.path(), &Device::Cpu)
        .expect_err("zero tokens")
        .to_string();
    assert!(error.contains("max_sequence_length is 0"), "{error}");
}
