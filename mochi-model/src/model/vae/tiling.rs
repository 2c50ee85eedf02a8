//! Spatial tiling of the VAE decode with overlap blending, so that the activations of a
//! decode are bounded by the tile size instead of the frame size.
//!
//! The rule is diffusers' `AutoencoderKLMochi.tiled_decode` (huggingface/diffusers
//! v0.42.1, `autoencoder_kl_mochi.py`): tiles start every `stride` latent pixels
//! (0, stride, 2·stride, … < size) and span `tile` latent pixels (shorter at the far
//! edge); each decoded tile is linearly blended into the tile above it and then into the
//! tile on its left over `(tile − stride)·8` output pixels (output row `y` of the overlap
//! gets weight `y/e` for the new tile and `1 − y/e` for the neighbour's last rows,
//! `e = min(blend, both tile sizes)`), where the neighbours are the already blended tiles,
//! as diffusers' in-place updates leave them. Each tile then keeps its first `stride·8`
//! pixels. A frame that fits in one tile (both sides ≤ `tile`) is decoded whole, as in
//! diffusers; once tiling is on, both axes are split, even one that would fit.
//!
//! Tiles are decoded one after another (row-major), each through the streaming decoder
//! when a chunk length is given, so a decode holds one tile's activations and causal-conv
//! contexts, plus the 3-channel output and the overlap strips of the previous row.
//! [`TiledDecodeStream`] is the time-major order: all tiles advance together one latent
//! chunk at a time, so decoded frames come out as they are produced, at the cost of
//! holding every tile's conv contexts. Tiling is an approximation of the whole decode
//! (group-norm statistics and conv context differ per tile); tiling and streaming
//! together equal tiling alone exactly, in either order.

use candle_core::{DType, Result, Tensor};

use super::{DecodeStream, VaeDecoder};

/// Tile grid in latent pixels (multiply by the decoder's spatial scale, 8, for output
/// pixels).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TileConfig {
    /// Tile height in latent pixels (diffusers `tile_sample_min_height / 8`).
    pub tile_height: usize,
    /// Tile width in latent pixels (diffusers `tile_sample_min_width / 8`).
    pub tile_width: usize,
    /// Vertical distance between tile starts (diffusers `tile_sample_stride_height / 8`).
    pub stride_height: usize,
    /// Horizontal distance between tile starts (diffusers `tile_sample_stride_width / 8`).
    pub stride_width: usize,
}

impl Default for TileConfig {
    fn default() -> Self {
        Self::diffusers_default()
    }
}

impl TileConfig {
    /// diffusers' defaults: 256-pixel tiles (32 latents) every 192 pixels (24 latents),
    /// i.e. a 64-pixel linear blend.
    pub fn diffusers_default() -> Self {
        Self::square(32, 24)
    }

    /// Square tiles of `tile` latent pixels every `stride` latent pixels.
    pub fn square(tile: usize, stride: usize) -> Self {
        Self {
            tile_height: tile,
            tile_width: tile,
            stride_height: stride,
            stride_width: stride,
        }
    }

    /// Checks `0 < stride ≤ tile` on both axes.
    pub fn validate(&self) -> Result<()> {
        for (axis, tile, stride) in [
            ("height", self.tile_height, self.stride_height),
            ("width", self.tile_width, self.stride_width),
        ] {
            if stride == 0 || stride > tile {
                candle_core::bail!(
                    "tile {axis} {tile} with stride {stride}: the stride must be between 1 and the tile size"
                );
            }
        }
        Ok(())
    }

    /// Whether a `height × width` latent frame is decoded whole (fits in one tile).
    pub fn fits(&self, height: usize, width: usize) -> bool {
        height <= self.tile_height && width <= self.tile_width
    }

    /// The tile rows and columns for a `height × width` latent frame.
    pub fn grid(&self, height: usize, width: usize) -> (Vec<Span>, Vec<Span>) {
        if self.fits(height, width) {
            return (vec![Span::whole(height)], vec![Span::whole(width)]);
        }
        (
            spans(height, self.tile_height, self.stride_height),
            spans(width, self.tile_width, self.stride_width),
        )
    }
}

/// One tile's extent along an axis, in latent pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// First latent pixel.
    pub start: usize,
    /// Latent pixels decoded.
    pub len: usize,
    /// Leading latent pixels of the (blended) tile that go to the output.
    pub keep: usize,
}

impl Span {
    fn whole(size: usize) -> Self {
        Self {
            start: 0,
            len: size,
            keep: size,
        }
    }
}

/// diffusers' tile starts `0, stride, … < size`, each `tile` long (cut at the edge) and
/// keeping `stride` (or what is left).
fn spans(size: usize, tile: usize, stride: usize) -> Vec<Span> {
    (0..size)
        .step_by(stride.max(1))
        .map(|start| Span {
            start,
            len: tile.min(size - start),
            keep: stride.min(size - start),
        })
        .collect()
}

/// diffusers' `blend_v` / `blend_h` along `dim`: the first `e` entries of `b` become
/// `a[−e + y]·(1 − y/e) + b[y]·(y/e)`, `e = min(extent, len(a), len(b))`. `a_tail` holds
/// (at least) the last `min(extent, len(a))` entries of the neighbour.
pub fn blend(a_tail: &Tensor, b: &Tensor, dim: usize, extent: usize) -> Result<Tensor> {
    let (a_len, b_len) = (a_tail.dim(dim)?, b.dim(dim)?);
    let e = extent.min(a_len).min(b_len);
    if e == 0 {
        return Ok(b.clone());
    }
    // The ramp weights as PyTorch forms them: the Python float `y / e` in f64, then f32.
    let ramp = |f: &dyn Fn(f64) -> f64| -> Result<Tensor> {
        let values: Vec<f32> = (0..e).map(|y| f(y as f64 / e as f64) as f32).collect();
        let mut shape = vec![1; b.rank()];
        shape[dim] = e;
        Tensor::from_vec(values, shape, b.device())?.to_dtype(b.dtype())
    };
    let keep_a = ramp(&|w| 1.0 - w)?;
    let take_b = ramp(&|w| w)?;
    let mixed = (a_tail.narrow(dim, a_len - e, e)?.broadcast_mul(&keep_a)?
        + b.narrow(dim, 0, e)?.broadcast_mul(&take_b)?)?;
    if e == b_len {
        return Ok(mixed);
    }
    Tensor::cat(&[&mixed, &b.narrow(dim, e, b_len - e)?], dim)
}

/// The last `min(n, len)` entries of `x` along `dim`, copied (so the rest can be freed).
fn tail(x: &Tensor, dim: usize, n: usize) -> Result<Tensor> {
    let len = x.dim(dim)?;
    let n = n.min(len);
    x.narrow(dim, len - n, n)?.copy()
}

/// Decodes the tiles of a grid row-major through `decode_tile(index, row, col)` and
/// assembles them with diffusers' blend: the blended tile above, then the one on the
/// left, then each tile keeps its first `keep` pixels.
fn assemble(
    grid: &(Vec<Span>, Vec<Span>),
    tiles: &TileConfig,
    scale: usize,
    mut decode_tile: impl FnMut(usize, &Span, &Span) -> Result<Tensor>,
) -> Result<Tensor> {
    let (rows, cols) = grid;
    let blend_rows = (tiles.tile_height - tiles.stride_height) * scale;
    let blend_cols = (tiles.tile_width - tiles.stride_width) * scale;
    // Bottom strip of each blended tile of the previous row, by column.
    let mut above: Vec<Option<Tensor>> = vec![None; cols.len()];
    let mut out_rows = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        let mut left: Option<Tensor> = None;
        let mut parts = Vec::with_capacity(cols.len());
        for (j, col) in cols.iter().enumerate() {
            let mut tile = decode_tile(i * cols.len() + j, row, col)?;
            if let Some(a) = &above[j] {
                tile = blend(a, &tile, 3, blend_rows)?;
            }
            if let Some(a) = &left {
                tile = blend(a, &tile, 4, blend_cols)?;
            }
            if blend_rows > 0 {
                above[j] = Some(tail(&tile, 3, blend_rows)?);
            }
            if blend_cols > 0 {
                left = Some(tail(&tile, 4, blend_cols)?);
            }
            let (tile_rows, tile_cols) = (tile.dim(3)?, tile.dim(4)?);
            parts.push(
                tile.narrow(3, 0, (row.keep * scale).min(tile_rows))?
                    .narrow(4, 0, (col.keep * scale).min(tile_cols))?
                    .contiguous()?,
            );
        }
        out_rows.push(Tensor::cat(&parts, 4)?);
    }
    Tensor::cat(&out_rows, 3)?.to_dtype(DType::F32)
}

/// The latents of one tile, contiguous.
fn tile_latents(z: &Tensor, row: &Span, col: &Span) -> Result<Tensor> {
    z.narrow(3, row.start, row.len)?
        .narrow(4, col.start, col.len)?
        .contiguous()
}

impl VaeDecoder {
    /// Output pixels per latent pixel (Π spatial expansions: 8 for Mochi).
    pub fn spatial_scale(&self) -> usize {
        self.config().spatial_expansions.iter().product()
    }

    /// Decodes `(B, 12, T, H, W)` in spatial tiles blended as diffusers'
    /// `tiled_decode` does (see the module docs), tile after tile, each streamed `chunk`
    /// latent frames at a time (0: each tile decoded whole). Same output shape as
    /// [`VaeDecoder::decode`]; equal to it when the frame fits in one tile.
    pub fn decode_tiled(&self, z: &Tensor, tiles: &TileConfig, chunk: usize) -> Result<Tensor> {
        tiles.validate()?;
        let (_, _, _, height, width) = z.dims5()?;
        let grid = tiles.grid(height, width);
        assemble(&grid, tiles, self.spatial_scale(), |_, row, col| {
            let zt = tile_latents(z, row, col)?;
            if chunk == 0 {
                self.decode(&zt)
            } else {
                self.decode_chunked(&zt, chunk)
            }
        })
    }

    /// Starts a time-major tiled stream over a `height × width` latent frame (see
    /// [`TiledDecodeStream`]).
    pub fn stream_tiled(
        &self,
        tiles: &TileConfig,
        height: usize,
        width: usize,
    ) -> Result<TiledDecodeStream<'_>> {
        tiles.validate()?;
        let grid = tiles.grid(height, width);
        let streams = (0..grid.0.len() * grid.1.len())
            .map(|_| self.stream())
            .collect();
        Ok(TiledDecodeStream {
            scale: self.spatial_scale(),
            tiles: *tiles,
            size: (height, width),
            grid,
            streams,
        })
    }
}

/// Time-major tiled decoding of one sample: every push advances all tiles by the same
/// latent frames (one [`DecodeStream`] per tile, each with its own causal contexts) and
/// returns those frames blended, so frames can be handed on as they are produced. The
/// concatenated pushes equal [`VaeDecoder::decode_tiled`] exactly (the blend is
/// per frame). Holds every tile's conv contexts at once (about the frame's, times the
/// overlap), plus one tile's chunk activations.
#[derive(Debug)]
pub struct TiledDecodeStream<'a> {
    scale: usize,
    tiles: TileConfig,
    size: (usize, usize),
    grid: (Vec<Span>, Vec<Span>),
    streams: Vec<DecodeStream<'a>>,
}

impl TiledDecodeStream<'_> {
    /// Decodes the next latent frames `(1, 12, t, H, W)` to `(1, 3, f, 8H, 8W)`.
    pub fn push(&mut self, z: &Tensor) -> Result<Tensor> {
        let (_, _, _, height, width) = z.dims5()?;
        if (height, width) != self.size {
            candle_core::bail!(
                "tiled stream set up for {:?} latents, got shape {:?}",
                self.size,
                z.dims()
            );
        }
        let streams = &mut self.streams;
        assemble(&self.grid, &self.tiles, self.scale, |index, row, col| {
            let stream = streams
                .get_mut(index)
                .ok_or_else(|| candle_core::Error::Msg(format!("no stream for tile {index}")))?;
            stream.push(&tile_latents(z, row, col)?)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn spans_follow_diffusers_loop() {
        // range(0, 10, 4) → 0, 4, 8; tiles of 6 cut at the edge; keep the stride.
        let s = spans(10, 6, 4);
        let got: Vec<(usize, usize, usize)> = s.iter().map(|s| (s.start, s.len, s.keep)).collect();
        assert_eq!(got, vec![(0, 6, 4), (4, 6, 4), (8, 2, 2)]);
        assert_eq!(s.iter().map(|s| s.keep).sum::<usize>(), 10);
        // Once tiling is on, an axis that fits is split too (diffusers does the same).
        let tiles = TileConfig {
            tile_height: 4,
            tile_width: 6,
            stride_height: 3,
            stride_width: 4,
        };
        let (rows, cols) = tiles.grid(4, 10);
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[1].start, rows[1].len, rows[1].keep), (3, 1, 1));
        assert_eq!(cols.len(), 3);
        let (rows, cols) = tiles.grid(4, 6);
        assert_eq!((rows, cols), (vec![Span::whole(4)], vec![Span::whole(6)]));
    }

    #[test]
    fn invalid_strides_are_refused() {
        assert!(TileConfig::square(4, 0).validate().is_err());
        assert!(TileConfig::square(4, 5).validate().is_err());
        assert!(TileConfig::square(4, 4).validate().is_ok());
        assert!(TileConfig::diffusers_default().validate().is_ok());
    }

    #[test]
    fn blend_ramps_from_neighbour_to_tile() {
        let dev = Device::Cpu;
        // Neighbour rows 10, 11, 12, 13; tile rows 0, 1, 2; extent 2 → e = 2.
        let a = Tensor::new(&[10f32, 11.0, 12.0, 13.0], &dev)
            .and_then(|t| t.reshape((1, 1, 1, 4, 1)))
            .expect("a");
        let b = Tensor::new(&[0f32, 1.0, 2.0], &dev)
            .and_then(|t| t.reshape((1, 1, 1, 3, 1)))
            .expect("b");
        let out = blend(&a, &b, 3, 2)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .expect("blend");
        // y = 0: all neighbour (12); y = 1: 13·0.5 + 1·0.5 = 7; y = 2 untouched.
        assert_eq!(out, vec![12.0, 7.0, 2.0]);
        // The extent is cut to the shorter of the two.
        let short = Tensor::new(&[5f32], &dev)
            .and_then(|t| t.reshape((1, 1, 1, 1, 1)))
            .expect("short");
        let out = blend(&a, &short, 3, 8)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .expect("blend");
        assert_eq!(out, vec![13.0]);
        let none = blend(&a, &b, 3, 0).expect("no blend");
        assert_eq!(none.dims(), b.dims());
    }
}
