//! Reads a safetensors file's header (names, dtypes, shapes, byte ranges) without reading
//! its data, and checks that the file is as long as the header says.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

/// Largest header accepted (the release's biggest index-less file has a few hundred KiB).
const MAX_HEADER_BYTES: u64 = 100 << 20;

/// One tensor of a safetensors file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Its dtype as written (`F32`, `BF16`, ...).
    pub dtype: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Byte range in the data section.
    pub data_offsets: (u64, u64),
}

/// A safetensors file's header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Tensors by name.
    pub tensors: BTreeMap<String, TensorInfo>,
    /// Bytes the file must have: 8 + header + data.
    pub expected_file_bytes: u64,
    /// Bytes it has.
    pub file_bytes: u64,
}

/// Bytes per element of a safetensors dtype name, for the dtypes models use.
pub fn dtype_bytes(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "F64" | "I64" | "U64" => 8,
        "F32" | "I32" | "U32" => 4,
        "F16" | "BF16" | "I16" | "U16" => 2,
        "I8" | "U8" | "BOOL" | "F8_E4M3" | "F8_E5M2" => 1,
        _ => return None,
    })
}

#[derive(serde::Deserialize)]
struct RawTensor {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: (u64, u64),
}

/// Reads the header of `path`; an error says what is wrong with the file in one sentence.
pub fn read(path: &Path) -> Result<Header, String> {
    let mut file =
        std::fs::File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let file_bytes = file
        .metadata()
        .map_err(|e| format!("cannot stat {}: {e}", path.display()))?
        .len();
    let mut length = [0u8; 8];
    file.read_exact(&mut length).map_err(|_| {
        format!(
            "{} is not a safetensors file ({file_bytes} bytes, too short for a header)",
            path.display()
        )
    })?;
    let header_bytes = u64::from_le_bytes(length);
    if header_bytes > MAX_HEADER_BYTES || header_bytes + 8 > file_bytes {
        return Err(format!(
            "{} is not a valid safetensors file (header length {header_bytes} for a file of {file_bytes} bytes)",
            path.display()
        ));
    }
    let mut text = vec![0u8; usize::try_from(header_bytes).unwrap_or(0)];
    file.read_exact(&mut text)
        .map_err(|e| format!("cannot read the header of {}: {e}", path.display()))?;
    let raw: BTreeMap<String, serde_json::Value> = serde_json::from_slice(&text)
        .map_err(|e| format!("{} has an unreadable header: {e}", path.display()))?;
    let mut tensors = BTreeMap::new();
    let mut data_end = 0u64;
    for (name, value) in raw {
        if name == "__metadata__" {
            continue;
        }
        let tensor: RawTensor = serde_json::from_value(value)
            .map_err(|e| format!("{}: tensor `{name}` has a bad entry: {e}", path.display()))?;
        let (start, end) = tensor.data_offsets;
        let elements: u64 = tensor.shape.iter().map(|d| *d as u64).product();
        if let Some(size) = dtype_bytes(&tensor.dtype)
            && (end < start || end - start != elements * size)
        {
            return Err(format!(
                "{}: tensor `{name}` ({} {:?}) spans bytes {start}..{end}, not {} bytes",
                path.display(),
                tensor.dtype,
                tensor.shape,
                elements * size
            ));
        }
        data_end = data_end.max(end);
        tensors.insert(
            name,
            TensorInfo {
                dtype: tensor.dtype,
                shape: tensor.shape,
                data_offsets: tensor.data_offsets,
            },
        );
    }
    Ok(Header {
        tensors,
        expected_file_bytes: 8 + header_bytes + data_end,
        file_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_fixture_header_and_its_size() {
        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/t5/text_encoder/model.safetensors"
        ));
        let header = read(path).expect("header");
        assert_eq!(header.expected_file_bytes, header.file_bytes);
        let shared = &header.tensors["shared.weight"];
        assert_eq!(
            (shared.dtype.as_str(), shared.shape.as_slice()),
            ("F32", &[80, 32][..])
        );
    }

    #[test]
    fn rejects_garbage_with_a_sentence() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("x.safetensors");
        std::fs::write(&path, b"hello").expect("write");
        assert!(
            read(&path)
                .expect_err("short")
                .contains("not a safetensors file")
        );
        std::fs::write(&path, [0xff; 64]).expect("write");
        assert!(
            read(&path)
                .expect_err("bad")
                .contains("not a valid safetensors file")
        );
    }
}
