//! The test pattern of the simulated backend: moving colour bars, a frame counter and the
//! job id in a built-in 3×5 bitmap font.

use super::Video;

/// The bars' colours (SMPTE-like).
const BARS: [[u8; 3]; 7] = [
    [192, 192, 192],
    [192, 192, 0],
    [0, 192, 192],
    [0, 192, 0],
    [192, 0, 192],
    [192, 0, 0],
    [0, 0, 192],
];

/// 3×5 glyphs for `0-9a-f` and `-`, one row per 3 low bits (top row first).
fn glyph(c: char) -> Option<[u8; 5]> {
    Some(match c {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 1, 1],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        'a' => [7, 5, 7, 5, 5],
        'b' => [6, 5, 6, 5, 6],
        'c' => [7, 4, 4, 4, 7],
        'd' => [6, 5, 5, 5, 6],
        'e' => [7, 4, 7, 4, 7],
        'f' => [7, 4, 7, 4, 4],
        '-' => [0, 0, 7, 0, 0],
        _ => return None,
    })
}

/// Renders `num_frames` frames of the test pattern.
pub fn render(label: &str, width: u32, height: u32, num_frames: u32, fps: u32) -> Video {
    let (w, h) = (width as usize, height as usize);
    let frames = (0..num_frames)
        .map(|index| {
            let mut frame = vec![0u8; w * h * 3];
            let shift = (index as usize * 4) % w.max(1);
            for y in 0..h {
                for x in 0..w {
                    let bar = ((x + shift) * BARS.len() / w.max(1)) % BARS.len();
                    let colour = if y > h * 3 / 4 {
                        shade(x, w)
                    } else {
                        BARS[bar]
                    };
                    frame[(y * w + x) * 3..(y * w + x) * 3 + 3].copy_from_slice(&colour);
                }
            }
            let scale = (h / 60).max(1);
            // The job id shrinks (down to one pixel per font pixel) to fit the width.
            let label_chars = label.chars().count().max(1);
            let label_scale = (w.saturating_sub(4 * scale) / (4 * label_chars)).clamp(1, scale);
            draw_text(
                &mut frame,
                w,
                h,
                &format!("{index:04}"),
                2 * scale,
                2 * scale,
                scale * 2,
            );
            draw_text(
                &mut frame,
                w,
                h,
                label,
                2 * scale,
                2 * scale + 14 * scale,
                label_scale,
            );
            frame
        })
        .collect();
    Video {
        width,
        height,
        fps,
        frames,
    }
}

fn shade(x: usize, w: usize) -> [u8; 3] {
    let level = u8::try_from(x * 255 / w.max(1)).unwrap_or(255);
    [level, level, level]
}

/// Draws `text` in white on black at `(left, top)`, each font pixel `scale` pixels wide;
/// what falls outside the frame is clipped.
fn draw_text(
    frame: &mut [u8],
    w: usize,
    h: usize,
    text: &str,
    left: usize,
    top: usize,
    scale: usize,
) {
    for (position, c) in text.chars().enumerate() {
        let Some(rows) = glyph(c) else { continue };
        let origin_x = left + position * 4 * scale;
        for (row, bits) in rows.iter().enumerate() {
            for column in 0..4 {
                let on = column < 3 && bits & (4 >> column) != 0;
                let colour = if on { [255, 255, 255] } else { [0, 0, 0] };
                for dy in 0..scale {
                    for dx in 0..scale {
                        let (x, y) = (origin_x + column * scale + dx, top + row * scale + dy);
                        if x < w && y < h {
                            frame[(y * w + x) * 3..(y * w + x) * 3 + 3].copy_from_slice(&colour);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_differ_so_motion_is_visible() {
        let video = render("ab-12", 128, 64, 3, 30);
        assert_eq!(video.frames.len(), 3);
        assert_ne!(video.frames[0], video.frames[1]);
    }

    #[test]
    fn the_counter_is_drawn_in_white() {
        let video = render("0", 128, 64, 1, 30);
        let white = video.frames[0]
            .chunks(3)
            .filter(|p| *p == [255, 255, 255])
            .count();
        assert!(white > 20, "{white} white pixels");
    }

    #[test]
    fn tiny_frames_clip_text_without_panicking() {
        let video = render("0123456789abcdef-", 16, 16, 2, 30);
        assert_eq!(video.frames[1].len(), 16 * 16 * 3);
    }
}
