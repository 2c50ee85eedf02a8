//! Still previews of a finished video, made from its frames on the slot's thread beside the
//! MP4: a thumbnail (the middle frame at full size) and a spritesheet (up to [`MAX_TILES`]
//! evenly spaced frames, scaled down by area averaging, in a grid). Both are baseline JPEG
//! (`jpeg-encoder`, 4:2:0 chroma at these qualities).

use jpeg_encoder::{ColorType, EncodingError};

use crate::backend::Video;

/// JPEG quality of the thumbnail (1–100).
pub const THUMBNAIL_QUALITY: u8 = 85;
/// JPEG quality of the spritesheet (1–100).
pub const SPRITESHEET_QUALITY: u8 = 80;
/// Most frames a spritesheet shows.
pub const MAX_TILES: usize = 16;
/// Widest a spritesheet tile may be, in pixels; narrower videos keep their size.
pub const MAX_TILE_WIDTH: u32 = 256;

/// Why the previews of a video could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PreviewError {
    /// The video has no frames or a zero dimension.
    #[error("cannot make previews of a {width}x{height} video of {frames} frames")]
    Shape {
        /// Width.
        width: u32,
        /// Height.
        height: u32,
        /// Frames.
        frames: usize,
    },
    /// A frame does not match the video's size.
    #[error("frame {index} has {len} bytes; {width}x{height} RGB needs {expected}")]
    FrameSize {
        /// Which frame.
        index: usize,
        /// Its length.
        len: usize,
        /// Width.
        width: u32,
        /// Height.
        height: u32,
        /// Expected length.
        expected: usize,
    },
    /// The image is wider or taller than JPEG allows (65 535 pixels).
    #[error("a {width}x{height} image is too large for JPEG (at most 65535 pixels a side)")]
    TooLarge {
        /// Width.
        width: u32,
        /// Height.
        height: u32,
    },
    /// The JPEG encoder refused the image.
    #[error("cannot encode a {width}x{height} JPEG")]
    Jpeg {
        /// Width.
        width: u32,
        /// Height.
        height: u32,
        /// The encoder's error.
        #[source]
        source: EncodingError,
    },
}

/// A video's previews, JPEG bytes each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Previews {
    /// The middle frame at full size, quality [`THUMBNAIL_QUALITY`].
    pub thumbnail: Vec<u8>,
    /// The frames of [`SheetLayout`] in a grid, quality [`SPRITESHEET_QUALITY`].
    pub spritesheet: Vec<u8>,
}

/// Makes the thumbnail and the spritesheet of `video`.
pub fn render(video: &Video) -> Result<Previews, PreviewError> {
    Ok(Previews {
        thumbnail: thumbnail(video)?,
        spritesheet: spritesheet(video)?,
    })
}

/// The middle frame (index `frames / 2`) at full size as a JPEG.
pub fn thumbnail(video: &Video) -> Result<Vec<u8>, PreviewError> {
    check_shape(video)?;
    let middle = frame(video, video.frames.len() / 2)?;
    encode_jpeg(middle, video.width, video.height, THUMBNAIL_QUALITY)
}

/// The frames of [`SheetLayout::new`] scaled to tiles, row-major, unused cells black, as a
/// JPEG.
pub fn spritesheet(video: &Video) -> Result<Vec<u8>, PreviewError> {
    check_shape(video)?;
    let layout = SheetLayout::new(video.width, video.height, video.frames.len());
    let (tile_width, tile_height) = (layout.tile_width as usize, layout.tile_height as usize);
    let sheet_width = layout.width() as usize;
    let mut sheet = vec![0u8; sheet_width * layout.height() as usize * 3];
    for (cell, &index) in layout.frame_indices.iter().enumerate() {
        let tile = downscale(
            frame(video, index)?,
            video.width,
            video.height,
            layout.tile_width,
            layout.tile_height,
        );
        let left = cell % layout.cols as usize * tile_width;
        let top = cell / layout.cols as usize * tile_height;
        for (row, tile_row) in tile.chunks_exact(tile_width * 3).enumerate() {
            let start = ((top + row) * sheet_width + left) * 3;
            sheet[start..start + tile_width * 3].copy_from_slice(tile_row);
        }
    }
    encode_jpeg(&sheet, layout.width(), layout.height(), SPRITESHEET_QUALITY)
}

/// Which frames a spritesheet shows and how its grid is laid out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SheetLayout {
    /// The frame each tile shows, in row-major cell order.
    pub frame_indices: Vec<usize>,
    /// Columns of the grid: `ceil(sqrt(tiles))`.
    pub cols: u32,
    /// Rows of the grid: `ceil(tiles / cols)`.
    pub rows: u32,
    /// Width of one tile in pixels (at most [`MAX_TILE_WIDTH`], never above the video's).
    pub tile_width: u32,
    /// Height of one tile in pixels (the video's aspect ratio, at least 1).
    pub tile_height: u32,
}

impl SheetLayout {
    /// The layout for a `width`×`height` video of `num_frames` frames.
    pub fn new(width: u32, height: u32, num_frames: usize) -> Self {
        let frame_indices = frame_indices(num_frames);
        let (cols, rows) = grid(frame_indices.len());
        let (tile_width, tile_height) = tile_size(width, height);
        Self {
            frame_indices,
            cols,
            rows,
            tile_width,
            tile_height,
        }
    }

    /// Width of the whole sheet in pixels.
    pub fn width(&self) -> u32 {
        self.cols * self.tile_width
    }

    /// Height of the whole sheet in pixels.
    pub fn height(&self) -> u32 {
        self.rows * self.tile_height
    }
}

/// Up to [`MAX_TILES`] evenly spaced frame indices, rounded to the nearest frame: every
/// frame when there are fewer, the first and the last when there are two or more.
fn frame_indices(num_frames: usize) -> Vec<usize> {
    let tiles = num_frames.min(MAX_TILES);
    if tiles < 2 {
        return (0..tiles).collect();
    }
    // round(i · (n − 1) / (tiles − 1)); the spacing is ≥ 1, so the indices are distinct.
    let (span, gaps) = (num_frames - 1, tiles - 1);
    (0..tiles)
        .map(|i| (2 * i * span + gaps) / (2 * gaps))
        .collect()
}

/// Columns and rows of a grid for `tiles` tiles: `ceil(sqrt(tiles))` columns.
fn grid(tiles: usize) -> (u32, u32) {
    let mut cols = 0usize;
    while cols * cols < tiles {
        cols += 1;
    }
    let rows = if cols == 0 { 0 } else { tiles.div_ceil(cols) };
    (cols as u32, rows as u32)
}

/// A tile's size for a `width`×`height` frame: at most [`MAX_TILE_WIDTH`] wide, the frame's
/// aspect ratio (height rounded to the nearest pixel), never larger than the frame, at
/// least 1×1.
fn tile_size(width: u32, height: u32) -> (u32, u32) {
    if width <= MAX_TILE_WIDTH {
        return (width.max(1), height.max(1));
    }
    let (width, height) = (u64::from(width), u64::from(height));
    let max_width = u64::from(MAX_TILE_WIDTH);
    let tile_height = (2 * height * max_width + width) / (2 * width);
    (MAX_TILE_WIDTH, tile_height.clamp(1, height.max(1)) as u32)
}

/// The source pixels one output pixel covers along an axis when `src` pixels shrink to
/// `dst`: the first of them and how much of each lies inside it, in units of 1/`dst` of a
/// source pixel (an output pixel's weights add up to `src`).
struct Span {
    first: usize,
    weights: Vec<u64>,
}

/// Output pixel `o` covers `[o·src, (o+1)·src)` and source pixel `i` covers
/// `[i·dst, (i+1)·dst)`, both in units of 1/`dst` of a source pixel.
fn spans(src: u32, dst: u32) -> Vec<Span> {
    let (src, dst) = (u64::from(src), u64::from(dst));
    (0..dst)
        .map(|out| {
            let (start, end) = (out * src, (out + 1) * src);
            let (first, last) = (start / dst, (end - 1) / dst);
            let weights = (first..=last)
                .map(|i| end.min((i + 1) * dst) - start.max(i * dst))
                .collect();
            Span {
                first: first as usize,
                weights,
            }
        })
        .collect()
}

/// Scales an RGB image down to `out_width`×`out_height` by area averaging (a box filter):
/// each output pixel is the exact area-weighted mean of the source pixels under it, in
/// integers, rounded to the nearest value once at the end.
fn downscale(rgb: &[u8], width: u32, height: u32, out_width: u32, out_height: u32) -> Vec<u8> {
    let (xs, ys) = (spans(width, out_width), spans(height, out_height));
    let (width, out_width) = (width as usize, out_width as usize);
    // Horizontal pass: per source row, each output column's weighted sums (≤ width · 255).
    let mut rows = vec![0u64; height as usize * out_width * 3];
    for (source_row, row_sums) in rgb
        .chunks_exact(width * 3)
        .zip(rows.chunks_exact_mut(out_width * 3))
    {
        for (span, sums) in xs.iter().zip(row_sums.chunks_exact_mut(3)) {
            for (offset, &weight) in span.weights.iter().enumerate() {
                let pixel = (span.first + offset) * 3;
                for channel in 0..3 {
                    sums[channel] += weight * u64::from(source_row[pixel + channel]);
                }
            }
        }
    }
    // Vertical pass: weighted sums of those (≤ width · height · 255), divided by the whole
    // area (width · height).
    let area = (width * height as usize) as u64;
    let mut out = Vec::with_capacity(out_width * out_height as usize * 3);
    let mut sums = vec![0u64; out_width * 3];
    for span in &ys {
        sums.fill(0);
        for (offset, &weight) in span.weights.iter().enumerate() {
            let row = (span.first + offset) * out_width * 3;
            for (sum, &value) in sums.iter_mut().zip(&rows[row..row + out_width * 3]) {
                *sum += weight * value;
            }
        }
        out.extend(sums.iter().map(|&sum| ((sum + area / 2) / area) as u8));
    }
    out
}

fn check_shape(video: &Video) -> Result<(), PreviewError> {
    if video.frames.is_empty() || video.width == 0 || video.height == 0 {
        return Err(PreviewError::Shape {
            width: video.width,
            height: video.height,
            frames: video.frames.len(),
        });
    }
    Ok(())
}

/// Frame `index` of `video`, checked against the video's size.
fn frame(video: &Video, index: usize) -> Result<&[u8], PreviewError> {
    let expected = video.width as usize * video.height as usize * 3;
    let bytes = video.frames.get(index).map_or(&[][..], Vec::as_slice);
    if bytes.len() != expected {
        return Err(PreviewError::FrameSize {
            index,
            len: bytes.len(),
            width: video.width,
            height: video.height,
            expected,
        });
    }
    Ok(bytes)
}

/// Encodes a `width`×`height` RGB image as a baseline JPEG.
fn encode_jpeg(rgb: &[u8], width: u32, height: u32, quality: u8) -> Result<Vec<u8>, PreviewError> {
    let too_large = || PreviewError::TooLarge { width, height };
    let jpeg_width = u16::try_from(width).map_err(|_| too_large())?;
    let jpeg_height = u16::try_from(height).map_err(|_| too_large())?;
    let mut jpeg = Vec::new();
    jpeg_encoder::Encoder::new(&mut jpeg, quality)
        .encode(rgb, jpeg_width, jpeg_height, ColorType::Rgb)
        .map_err(|source| PreviewError::Jpeg {
            width,
            height,
            source,
        })?;
    Ok(jpeg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::pattern;

    fn decode(jpeg: &[u8]) -> (jpeg_decoder::ImageInfo, Vec<u8>) {
        let mut decoder = jpeg_decoder::Decoder::new(jpeg);
        let pixels = decoder.decode().expect("decodable JPEG");
        (decoder.info().expect("header read"), pixels)
    }

    /// JPEG at these qualities keeps a flat colour within a few levels.
    fn assert_close(pixel: &[u8], expected: [u8; 3]) {
        let close = pixel
            .iter()
            .zip(expected)
            .all(|(&got, want)| got.abs_diff(want) <= 4);
        assert!(close, "{pixel:?} is not close to {expected:?}");
    }

    fn solid(width: u32, height: u32, colour: [u8; 3]) -> Vec<u8> {
        colour.repeat(width as usize * height as usize)
    }

    #[test]
    fn tile_count_and_grid_follow_the_frame_count() {
        // (frames, tiles, cols, rows)
        for (frames, tiles, cols, rows) in [
            (1, 1, 1, 1),
            (2, 2, 2, 1),
            (5, 5, 3, 2),
            (16, 16, 4, 4),
            (31, 16, 4, 4),
            (163, 16, 4, 4),
        ] {
            let layout = SheetLayout::new(848, 480, frames);
            assert_eq!(
                (layout.frame_indices.len(), layout.cols, layout.rows),
                (tiles, cols, rows),
                "{frames} frames"
            );
            assert_eq!((layout.width(), layout.height()), (cols * 256, rows * 145));
        }
        assert_eq!(grid(3), (2, 2));
        assert_eq!(grid(10), (4, 3));
        assert_eq!(grid(0), (0, 0));
    }

    #[test]
    fn chosen_frames_are_evenly_spaced_with_the_first_and_the_last() {
        assert_eq!(frame_indices(1), vec![0]);
        assert_eq!(frame_indices(2), vec![0, 1]);
        assert_eq!(frame_indices(5), vec![0, 1, 2, 3, 4]);
        assert_eq!(frame_indices(16), (0..16).collect::<Vec<_>>());
        // 30 / 15 = 2 exactly.
        assert_eq!(frame_indices(31), (0..31).step_by(2).collect::<Vec<_>>());
        // 162 / 15 = 10.8, rounded to the nearest frame.
        assert_eq!(
            frame_indices(163),
            vec![
                0, 11, 22, 32, 43, 54, 65, 76, 86, 97, 108, 119, 130, 140, 151, 162
            ]
        );
        for frames in 2..400 {
            let indices = frame_indices(frames);
            assert_eq!(indices.len(), frames.min(MAX_TILES));
            assert_eq!((indices[0], indices[indices.len() - 1]), (0, frames - 1));
            let gaps: Vec<usize> = indices.windows(2).map(|w| w[1] - w[0]).collect();
            let (least, most) = (gaps.iter().min(), gaps.iter().max());
            assert!(
                least.zip(most).is_some_and(|(l, m)| *l >= 1 && m - l <= 1),
                "{frames} frames: {indices:?}"
            );
        }
    }

    #[test]
    fn tiles_keep_the_aspect_ratio_and_never_upscale() {
        assert_eq!(tile_size(848, 480), (256, 145));
        assert_eq!(tile_size(1280, 720), (256, 144));
        assert_eq!(tile_size(256, 999), (256, 999));
        assert_eq!(tile_size(96, 64), (96, 64));
        assert_eq!(tile_size(65_535, 2), (256, 1));
    }

    #[test]
    fn box_filter_averages_exactly() {
        // 4x2 → 2x1: each output pixel is the mean of a 2x2 block.
        #[rustfmt::skip]
        let image = [
            10, 0, 255,   20, 0, 255,   0, 100, 1,   0, 200, 2,
            30, 0, 255,   40, 0, 255,   0, 100, 3,   0, 200, 4,
        ];
        assert_eq!(downscale(&image, 4, 2, 2, 1), vec![25, 0, 255, 0, 150, 3]);
        // 3x1 → 2x1: output 0 is pixel 0 plus half of pixel 1, output 1 the other half plus
        // pixel 2 (weights 2:1 and 1:2 over an area of 3).
        let image = [0, 0, 0, 90, 90, 90, 180, 180, 180];
        assert_eq!(
            downscale(&image, 3, 1, 2, 1),
            vec![30, 30, 30, 150, 150, 150]
        );
        // Same size: unchanged.
        let image: Vec<u8> = (0..5 * 3 * 3).map(|v| (v * 5) as u8).collect();
        assert_eq!(downscale(&image, 5, 3, 5, 3), image);
        // A solid colour stays that colour at any ratio.
        let image = solid(848, 480, [200, 30, 7]);
        assert_eq!(
            downscale(&image, 848, 480, 256, 145),
            solid(256, 145, [200, 30, 7])
        );
    }

    #[test]
    fn thumbnail_is_the_middle_frame_at_full_size() {
        let mut video = pattern::render("x", 96, 64, 7, 30);
        video.frames[3] = solid(96, 64, [200, 40, 90]);
        let (info, pixels) = decode(&thumbnail(&video).expect("thumbnail"));
        assert_eq!((info.width, info.height), (96, 64));
        assert_eq!(
            info.coding_process,
            jpeg_decoder::CodingProcess::DctSequential,
            "baseline JPEG"
        );
        assert_eq!(info.pixel_format, jpeg_decoder::PixelFormat::RGB24);
        for pixel in pixels.chunks_exact(3) {
            assert_close(pixel, [200, 40, 90]);
        }
    }

    #[test]
    fn spritesheet_decodes_to_its_grid_with_black_unused_cells() {
        // 5 frames of 848x480 → 3x2 cells of 256x145; the last cell is black.
        let frames = (0..5u8)
            .map(|i| solid(848, 480, [40 * i + 40, 255 - 40 * i, 128]))
            .collect();
        let video = Video {
            width: 848,
            height: 480,
            fps: 30,
            frames,
        };
        let (info, pixels) = decode(&spritesheet(&video).expect("spritesheet"));
        assert_eq!((info.width, info.height), (768, 290));
        let at = |x: usize, y: usize| &pixels[(y * 768 + x) * 3..(y * 768 + x) * 3 + 3];
        for (cell, expected) in (0..6u8).map(|i| {
            let colour = if i < 5 {
                [40 * i + 40, 255 - 40 * i, 128]
            } else {
                [0, 0, 0]
            };
            (usize::from(i), colour)
        }) {
            assert_close(at(cell % 3 * 256 + 128, cell / 3 * 145 + 72), expected);
        }
    }

    #[test]
    fn small_and_single_frame_videos_get_previews() {
        let video = pattern::render("x", 2, 2, 1, 30);
        let previews = render(&video).expect("previews");
        assert_eq!(
            (
                decode(&previews.thumbnail).0.width,
                decode(&previews.spritesheet).0.width
            ),
            (2, 2)
        );
    }

    #[test]
    fn refuses_empty_videos_and_wrong_frame_sizes() {
        let mut video = pattern::render("x", 64, 64, 3, 30);
        video.frames[1].pop();
        assert!(matches!(
            render(&video),
            Err(PreviewError::FrameSize { index: 1, .. })
        ));
        video.frames.clear();
        assert!(matches!(render(&video), Err(PreviewError::Shape { .. })));
        assert!(matches!(
            encode_jpeg(&[], 70_000, 1, 80),
            Err(PreviewError::TooLarge { .. })
        ));
    }
}
