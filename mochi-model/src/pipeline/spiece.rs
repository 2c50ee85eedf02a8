//! Reads a SentencePiece `spiece.model` (the file the Mochi release ships in
//! `tokenizer/`) and builds an equivalent `tokenizers::Tokenizer` in pure Rust, so the
//! text path needs no conversion step and no Python.
//!
//! The model file is a protobuf `ModelProto` (sentencepiece `sentencepiece_model.proto`):
//! field 1 = pieces (`piece` 1, `score` 2, `type` 3), field 2 = trainer spec
//! (`model_type` 3, `byte_fallback` 35, `unk_id` 40), field 3 = normalizer spec
//! (`precompiled_charsmap` 2, `add_dummy_prefix` 3, `remove_extra_whitespaces` 4,
//! `escape_whitespaces` 5). The tokenizer follows the model's own normalizer settings in
//! SentencePiece's order (as transformers' `build_tokenizer_from_spm_proto` does), so it
//! encodes like `SentencePieceProcessor.encode`; on top of that it behaves like the T5
//! tokenizer: `<extra_id_N>` special tokens after the pieces, control pieces (`<pad>`,
//! `</s>`, `<unk>`) matched as special tokens, and `</s>` appended.

use candle_core::{Error, Result};
use tokenizers::models::unigram::Unigram;
use tokenizers::normalizers::replace::ReplacePattern;
use tokenizers::normalizers::{Precompiled, Replace, Sequence};
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, NormalizerWrapper, Tokenizer};

/// SentencePiece's whitespace marker.
const SPACE_MARK: char = '\u{2581}';

/// Kind of a vocabulary piece (`SentencePiece.Type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceKind {
    /// An ordinary piece.
    Normal,
    /// The unknown piece.
    Unknown,
    /// A control symbol such as `<pad>` or `</s>` (never produced from text).
    Control,
    /// A user-defined symbol (always emitted whole).
    UserDefined,
    /// An unused piece.
    Unused,
    /// A byte-fallback piece `<0xNN>`.
    Byte,
}

/// One vocabulary entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    /// The piece text (with `▁` for spaces).
    pub text: String,
    /// Unigram log-probability.
    pub score: f32,
    /// Piece kind.
    pub kind: PieceKind,
}

/// The parts of a `ModelProto` the tokenizer needs.
#[derive(Debug, Clone, PartialEq)]
pub struct SpmModel {
    /// The vocabulary, in id order.
    pub pieces: Vec<Piece>,
    /// `trainer_spec.model_type` (1 = unigram).
    pub model_type: u64,
    /// `trainer_spec.unk_id`.
    pub unk_id: usize,
    /// `trainer_spec.byte_fallback`.
    pub byte_fallback: bool,
    /// `normalizer_spec.precompiled_charsmap` (may be empty).
    pub precompiled_charsmap: Vec<u8>,
    /// `normalizer_spec.add_dummy_prefix`.
    pub add_dummy_prefix: bool,
    /// `normalizer_spec.remove_extra_whitespaces`.
    pub remove_extra_whitespaces: bool,
    /// `normalizer_spec.escape_whitespaces`.
    pub escape_whitespaces: bool,
}

/// One protobuf field value.
enum Value<'a> {
    Varint(u64),
    Fixed64,
    Bytes(&'a [u8]),
    Fixed32(u32),
}

/// A minimal protobuf wire-format reader.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn byte(&mut self) -> Result<u8> {
        let byte = *self
            .buf
            .get(self.pos)
            .ok_or_else(|| Error::Msg("spiece.model: truncated protobuf".into()))?;
        self.pos += 1;
        Ok(byte)
    }

    fn varint(&mut self) -> Result<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.byte()?;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(Error::Msg("spiece.model: varint too long".into()))
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(len)
            .filter(|end| *end <= self.buf.len())
            .ok_or_else(|| Error::Msg("spiece.model: truncated protobuf field".into()))?;
        let bytes = &self.buf[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    /// The next `(field number, value)`, or `None` at the end.
    fn field(&mut self) -> Result<Option<(u64, Value<'a>)>> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Value::Fixed64
            }
            2 => {
                let len = usize::try_from(self.varint()?)
                    .map_err(|_| Error::Msg("spiece.model: field length overflows".into()))?;
                Value::Bytes(self.take(len)?)
            }
            5 => {
                let bytes = self.take(4)?;
                Value::Fixed32(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
            }
            wire => {
                return Err(Error::Msg(format!(
                    "spiece.model: unsupported protobuf wire type {wire}"
                )));
            }
        };
        Ok(Some((key >> 3, value)))
    }
}

fn parse_piece(bytes: &[u8]) -> Result<Piece> {
    let mut piece = Piece {
        text: String::new(),
        score: 0.0,
        kind: PieceKind::Normal,
    };
    let mut reader = Reader::new(bytes);
    while let Some((field, value)) = reader.field()? {
        match (field, value) {
            (1, Value::Bytes(text)) => {
                piece.text = String::from_utf8(text.to_vec())
                    .map_err(|_| Error::Msg("spiece.model: piece is not UTF-8".into()))?;
            }
            (2, Value::Fixed32(bits)) => piece.score = f32::from_bits(bits),
            (3, Value::Varint(kind)) => {
                piece.kind = match kind {
                    2 => PieceKind::Unknown,
                    3 => PieceKind::Control,
                    4 => PieceKind::UserDefined,
                    5 => PieceKind::Unused,
                    6 => PieceKind::Byte,
                    _ => PieceKind::Normal,
                }
            }
            _ => {}
        }
    }
    Ok(piece)
}

impl SpmModel {
    /// Parses the bytes of a `spiece.model`.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let mut model = Self {
            pieces: Vec::new(),
            model_type: 1,
            unk_id: 0,
            byte_fallback: false,
            precompiled_charsmap: Vec::new(),
            add_dummy_prefix: true,
            remove_extra_whitespaces: true,
            escape_whitespaces: true,
        };
        let mut reader = Reader::new(bytes);
        while let Some((field, value)) = reader.field()? {
            let Value::Bytes(message) = value else {
                continue;
            };
            match field {
                1 => model.pieces.push(parse_piece(message)?),
                2 => model.read_trainer_spec(message)?,
                3 => model.read_normalizer_spec(message)?,
                _ => {}
            }
        }
        if model.pieces.is_empty() {
            return Err(Error::Msg("spiece.model has no pieces".into()));
        }
        if model.unk_id >= model.pieces.len() {
            return Err(Error::Msg(format!(
                "spiece.model: unk_id {} outside the vocabulary of {}",
                model.unk_id,
                model.pieces.len()
            )));
        }
        Ok(model)
    }

    fn read_trainer_spec(&mut self, bytes: &[u8]) -> Result<()> {
        let mut reader = Reader::new(bytes);
        while let Some((field, value)) = reader.field()? {
            if let Value::Varint(v) = value {
                match field {
                    3 => self.model_type = v,
                    35 => self.byte_fallback = v != 0,
                    // int32 on the wire: negative values are 10-byte varints.
                    40 => self.unk_id = usize::try_from(v as i64).unwrap_or(usize::MAX),
                    _ => {}
                }
            }
        }
        Ok(())
    }

    fn read_normalizer_spec(&mut self, bytes: &[u8]) -> Result<()> {
        let mut reader = Reader::new(bytes);
        while let Some((field, value)) = reader.field()? {
            match (field, value) {
                (2, Value::Bytes(map)) => self.precompiled_charsmap = map.to_vec(),
                (3, Value::Varint(v)) => self.add_dummy_prefix = v != 0,
                (4, Value::Varint(v)) => self.remove_extra_whitespaces = v != 0,
                (5, Value::Varint(v)) => self.escape_whitespaces = v != 0,
                _ => {}
            }
        }
        Ok(())
    }
}

fn tokenizer_error(context: &str, error: impl std::fmt::Display) -> Error {
    Error::Msg(format!("spiece.model: {context}: {error}"))
}

/// Builds a T5 tokenizer from a parsed model: the pieces plus `extra_ids`
/// `<extra_id_N>` tokens (N counting down from `extra_ids − 1`), `</s>` appended.
pub fn t5_tokenizer(model: &SpmModel, extra_ids: usize) -> Result<Tokenizer> {
    if model.model_type != 1 {
        return Err(Error::Msg(format!(
            "spiece.model: model type {} is not unigram",
            model.model_type
        )));
    }
    let mut vocab: Vec<(String, f64)> = model
        .pieces
        .iter()
        .map(|p| (p.text.clone(), f64::from(p.score)))
        .collect();
    let extra: Vec<String> = (0..extra_ids)
        .rev()
        .map(|i| format!("<extra_id_{i}>"))
        .collect();
    vocab.extend(extra.iter().map(|t| (t.clone(), 0.0)));
    let unigram = Unigram::from(vocab, Some(model.unk_id), model.byte_fallback)
        .map_err(|e| tokenizer_error("invalid vocabulary", e))?;
    let mut tokenizer = Tokenizer::new(unigram);

    let mut normalizers: Vec<NormalizerWrapper> = Vec::new();
    if !model.precompiled_charsmap.is_empty() {
        let precompiled = Precompiled::from(&model.precompiled_charsmap)
            .map_err(|e| tokenizer_error("invalid precompiled charsmap", e))?;
        normalizers.push(precompiled.into());
    }
    let replace = |pattern: ReplacePattern, content: &str| -> Result<NormalizerWrapper> {
        Replace::new(pattern, content)
            .map(NormalizerWrapper::from)
            .map_err(|e| tokenizer_error("normalizer", e))
    };
    if model.remove_extra_whitespaces {
        // Only spaces count: SentencePiece leaves other whitespace (newlines) alone.
        normalizers.push(replace(ReplacePattern::Regex(r"\A +| +\z".into()), "")?);
        normalizers.push(replace(ReplacePattern::Regex(" {2,}".into()), " ")?);
    }
    if model.escape_whitespaces {
        normalizers.push(replace(
            ReplacePattern::String(" ".into()),
            &SPACE_MARK.to_string(),
        )?);
    }
    tokenizer
        .with_normalizer(Some(Sequence::new(normalizers)))
        .map_err(|e| tokenizer_error("normalizer", e))?;
    if model.add_dummy_prefix {
        // `Always`: every text segment between special tokens gets the dummy prefix, also
        // when leading spaces were stripped (`First` keys on the original offset being 0).
        tokenizer.with_pre_tokenizer(Some(Metaspace::new(
            SPACE_MARK,
            PrependScheme::Always,
            false,
        )));
    }

    let mut special: Vec<AddedToken> = model
        .pieces
        .iter()
        .filter(|p| matches!(p.kind, PieceKind::Control | PieceKind::Unknown))
        .map(|p| AddedToken::from(p.text.clone(), true))
        .collect();
    special.extend(extra.into_iter().map(|t| AddedToken::from(t, true)));
    tokenizer
        .add_special_tokens(special)
        .map_err(|e| tokenizer_error("special tokens", e))?;
    let user_defined: Vec<AddedToken> = model
        .pieces
        .iter()
        .filter(|p| p.kind == PieceKind::UserDefined)
        .map(|p| AddedToken::from(p.text.clone(), false))
        .collect();
    tokenizer
        .add_tokens(user_defined)
        .map_err(|e| tokenizer_error("user-defined pieces", e))?;

    let eos = model
        .pieces
        .iter()
        .position(|p| p.text == "</s>")
        .ok_or_else(|| Error::Msg("spiece.model has no `</s>` piece".into()))?;
    let eos = u32::try_from(eos).map_err(|e| tokenizer_error("eos id", e))?;
    let processor = TemplateProcessing::builder()
        .try_single("$A </s>")
        .map_err(|e| tokenizer_error("post-processor", e))?
        .special_tokens(vec![("</s>", eos)])
        .build()
        .map_err(|e| tokenizer_error("post-processor", e))?;
    tokenizer.with_post_processor(Some(processor));
    Ok(tokenizer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut value: u64, out: &mut Vec<u8>) {
        loop {
            let byte = (value & 0x7f) as u8;
            value >>= 7;
            if value == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }

    fn bytes_field(field: u64, payload: &[u8], out: &mut Vec<u8>) {
        varint(field << 3 | 2, out);
        varint(payload.len() as u64, out);
        out.extend_from_slice(payload);
    }

    fn piece(text: &str, score: f32, kind: u64) -> Vec<u8> {
        let mut out = Vec::new();
        bytes_field(1, text.as_bytes(), &mut out);
        varint(2 << 3 | 5, &mut out);
        out.extend_from_slice(&score.to_le_bytes());
        varint(3 << 3, &mut out);
        varint(kind, &mut out);
        out
    }

    /// A hand-written model: `<pad>`, `</s>`, `<unk>`, then a few pieces; no charsmap.
    fn toy_model() -> Vec<u8> {
        let mut out = Vec::new();
        for (text, score, kind) in [
            ("<pad>", 0.0, 3),
            ("</s>", 0.0, 3),
            ("<unk>", 0.0, 2),
            ("\u{2581}", -2.0, 1),
            ("\u{2581}ab", -1.0, 1),
            ("a", -3.0, 1),
            ("b", -3.0, 1),
            ("c", -3.0, 1),
        ] {
            bytes_field(1, &piece(text, score, kind), &mut out);
        }
        let mut trainer = Vec::new();
        varint(3 << 3, &mut trainer);
        varint(1, &mut trainer);
        varint(40 << 3, &mut trainer);
        varint(2, &mut trainer);
        bytes_field(2, &trainer, &mut out);
        out
    }

    #[test]
    fn parses_pieces_scores_kinds_and_defaults() {
        let model = SpmModel::parse(&toy_model()).expect("parse");
        assert_eq!(model.pieces.len(), 8);
        assert_eq!(model.unk_id, 2);
        assert_eq!(model.pieces[1].kind, PieceKind::Control);
        assert_eq!(model.pieces[4].text, "\u{2581}ab");
        assert_eq!(model.pieces[4].score, -1.0);
        assert!(model.add_dummy_prefix && model.remove_extra_whitespaces);
        assert!(model.precompiled_charsmap.is_empty());
    }

    #[test]
    fn toy_tokenizer_collapses_spaces_appends_eos_and_fuses_unknowns() {
        let model = SpmModel::parse(&toy_model()).expect("parse");
        let tokenizer = t5_tokenizer(&model, 2).expect("tokenizer");
        let ids = |text: &str| -> Vec<u32> {
            tokenizer
                .encode(text, true)
                .expect("encode")
                .get_ids()
                .to_vec()
        };
        assert_eq!(ids("ab c"), vec![4, 3, 7, 1]);
        assert_eq!(ids("  ab   c  "), vec![4, 3, 7, 1]);
        assert_eq!(ids("ab xy"), vec![4, 3, 2, 1]);
        assert_eq!(ids("ab<extra_id_0></s>"), vec![4, 9, 1, 1]);
        assert_eq!(ids(""), vec![1]);
    }

    #[test]
    fn truncated_and_empty_files_are_errors() {
        let bytes = toy_model();
        assert!(SpmModel::parse(&bytes[..bytes.len() - 3]).is_err());
        assert!(SpmModel::parse(&[]).is_err());
    }
}
