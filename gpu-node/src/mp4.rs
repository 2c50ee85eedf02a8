//! MP4 output: H.264 (OpenH264, Constrained Baseline, yuv420p) muxed with the `moov` box
//! first so browsers can start playing before the download ends; and `probe`, which reads
//! an MP4 back and decodes every frame.

use std::io::Cursor;

use muxide::api::{MuxerBuilder, VideoCodec};
use openh264::OpenH264API;
use openh264::decoder::Decoder;
use openh264::encoder::{
    BitRate, Encoder, EncoderConfig, FrameRate, FrameType, RateControlMode, UsageType,
};
use openh264::formats::{RgbSliceU8, YUVBuffer};
use serde::{Deserialize, Serialize};

use crate::backend::Video;

/// H.264 settings of the produced MP4 files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VideoConfig {
    /// Target bits per pixel per frame; the bitrate is `bits_per_pixel · width · height · fps`.
    pub bits_per_pixel: f32,
    /// Lowest bitrate, bits per second.
    pub min_bitrate_bps: u32,
    /// Seconds between key frames (seeking granularity).
    pub keyframe_interval_s: u32,
}

impl Default for VideoConfig {
    fn default() -> Self {
        Self {
            bits_per_pixel: 0.15,
            min_bitrate_bps: 500_000,
            keyframe_interval_s: 2,
        }
    }
}

/// Why a video could not be encoded or read back.
#[derive(Debug, thiserror::Error)]
pub enum Mp4Error {
    /// The frames do not match the stated size.
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
    /// The video has no frames or odd dimensions.
    #[error(
        "cannot encode a {width}x{height} video of {frames} frames (need ≥ 1 frame, even dimensions)"
    )]
    Shape {
        /// Width.
        width: u32,
        /// Height.
        height: u32,
        /// Frames.
        frames: usize,
    },
    /// The H.264 encoder or decoder failed.
    #[error("H.264 codec: {0}")]
    Codec(String),
    /// Muxing failed.
    #[error("MP4 muxer: {0}")]
    Mux(String),
    /// The MP4 could not be parsed.
    #[error("MP4 parse: {0}")]
    Parse(String),
}

/// Encodes `video` as an H.264 MP4.
pub fn encode(video: &Video, settings: &VideoConfig) -> Result<Vec<u8>, Mp4Error> {
    let (width, height) = (video.width, video.height);
    if video.frames.is_empty() || width == 0 || height == 0 || width % 2 == 1 || height % 2 == 1 {
        return Err(Mp4Error::Shape {
            width,
            height,
            frames: video.frames.len(),
        });
    }
    let fps = video.fps.max(1);
    let expected = width as usize * height as usize * 3;
    let bitrate = (f64::from(settings.bits_per_pixel)
        * f64::from(width)
        * f64::from(height)
        * f64::from(fps))
    .clamp(f64::from(settings.min_bitrate_bps), f64::from(u32::MAX)) as u32;
    let config = EncoderConfig::new()
        .bitrate(BitRate::from_bps(bitrate))
        .rate_control_mode(RateControlMode::Bitrate)
        .max_frame_rate(FrameRate::from_hz(fps as f32))
        .usage_type(UsageType::CameraVideoRealTime)
        .skip_frames(false);
    let mut encoder = Encoder::with_api_config(OpenH264API::from_source(), config)
        .map_err(|e| Mp4Error::Codec(e.to_string()))?;
    let mut muxer = MuxerBuilder::new(Vec::new())
        .video(VideoCodec::H264, width, height, f64::from(fps))
        .with_fast_start(true)
        .build()
        .map_err(|e| Mp4Error::Mux(e.to_string()))?;
    let keyframe_every = (settings.keyframe_interval_s.max(1) * fps) as usize;
    let mut yuv = YUVBuffer::new(width as usize, height as usize);
    let mut annex_b = Vec::new();
    for (index, frame) in video.frames.iter().enumerate() {
        if frame.len() != expected {
            return Err(Mp4Error::FrameSize {
                index,
                len: frame.len(),
                width,
                height,
                expected,
            });
        }
        yuv.read_rgb8(RgbSliceU8::new(frame, (width as usize, height as usize)));
        if index > 0 && index % keyframe_every == 0 {
            encoder.force_intra_frame();
        }
        let bitstream = encoder
            .encode(&yuv)
            .map_err(|e| Mp4Error::Codec(e.to_string()))?;
        let key = matches!(bitstream.frame_type(), FrameType::IDR | FrameType::I);
        annex_b.clear();
        bitstream.write_vec(&mut annex_b);
        let pts = index as f64 / f64::from(fps);
        muxer
            .write_video(pts, &annex_b, key)
            .map_err(|e| Mp4Error::Mux(e.to_string()))?;
    }
    muxer
        .finish_in_place()
        .map_err(|e| Mp4Error::Mux(e.to_string()))?;
    Ok(muxer.into_writer())
}

/// What `probe` found in an MP4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mp4Info {
    /// Frames the H.264 decoder produced.
    pub decoded_frames: u32,
    /// Samples in the track.
    pub samples: u32,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Frames per second (rounded).
    pub fps: u32,
    /// Whether `moov` comes before `mdat` (fast start).
    pub moov_first: bool,
}

/// Reads an MP4's first H.264 track and decodes every sample.
pub fn probe(bytes: &[u8]) -> Result<Mp4Info, Mp4Error> {
    let parse = |e: mp4::Error| Mp4Error::Parse(e.to_string());
    let mut reader =
        mp4::Mp4Reader::read_header(Cursor::new(bytes), bytes.len() as u64).map_err(parse)?;
    let (track_id, width, height, fps, samples, sps, pps) = {
        let track = reader
            .tracks()
            .values()
            .find(|t| matches!(t.media_type(), Ok(mp4::MediaType::H264)))
            .ok_or_else(|| Mp4Error::Parse("no H.264 track".to_owned()))?;
        (
            track.track_id(),
            u32::from(track.width()),
            u32::from(track.height()),
            track.frame_rate().round() as u32,
            track.sample_count(),
            track.sequence_parameter_set().map_err(parse)?.to_vec(),
            track.picture_parameter_set().map_err(parse)?.to_vec(),
        )
    };
    let codec = |e: openh264::Error| Mp4Error::Codec(e.to_string());
    let mut decoder =
        Decoder::with_api_config(OpenH264API::from_source(), Default::default()).map_err(codec)?;
    let mut decoded = 0u32;
    let mut packet = Vec::new();
    for index in 1..=samples {
        let Some(sample) = reader.read_sample(track_id, index).map_err(parse)? else {
            continue;
        };
        packet.clear();
        if index == 1 {
            for parameter_set in [&sps, &pps] {
                packet.extend_from_slice(&[0, 0, 0, 1]);
                packet.extend_from_slice(parameter_set);
            }
        }
        avcc_to_annex_b(&sample.bytes, &mut packet)?;
        if decoder.decode(&packet).map_err(codec)?.is_some() {
            decoded += 1;
        }
    }
    decoded += u32::try_from(decoder.flush_remaining().map_err(codec)?.len()).unwrap_or(u32::MAX);
    Ok(Mp4Info {
        decoded_frames: decoded,
        samples,
        width,
        height,
        fps,
        moov_first: moov_before_mdat(bytes),
    })
}

/// Rewrites 4-byte length-prefixed NAL units as start-code-prefixed ones.
fn avcc_to_annex_b(mut sample: &[u8], out: &mut Vec<u8>) -> Result<(), Mp4Error> {
    while !sample.is_empty() {
        let Some((length, rest)) = sample.split_first_chunk::<4>() else {
            return Err(Mp4Error::Parse("truncated NAL length".to_owned()));
        };
        let length = u32::from_be_bytes(*length) as usize;
        let nal = rest
            .get(..length)
            .ok_or_else(|| Mp4Error::Parse("NAL unit past the sample's end".to_owned()))?;
        out.extend_from_slice(&[0, 0, 0, 1]);
        out.extend_from_slice(nal);
        sample = &rest[length..];
    }
    Ok(())
}

/// Whether the top-level `moov` box comes before `mdat`.
fn moov_before_mdat(bytes: &[u8]) -> bool {
    let mut offset = 0usize;
    while let Some(header) = bytes.get(offset..offset + 8) {
        let size = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        match &header[4..8] {
            b"moov" => return true,
            b"mdat" => return false,
            _ => {}
        }
        if size < 8 {
            return false;
        }
        offset += size;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::pattern;

    #[test]
    fn encoded_video_decodes_with_every_frame_size_and_rate() {
        let video = pattern::render("0123-abcd", 256, 144, 13, 24);
        let bytes = encode(&video, &VideoConfig::default()).expect("encode");
        let info = probe(&bytes).expect("probe");
        assert_eq!(info.decoded_frames, 13);
        assert_eq!(info.samples, 13);
        assert_eq!((info.width, info.height, info.fps), (256, 144, 24));
        assert!(
            info.moov_first,
            "moov must come first for progressive playback"
        );
    }

    #[test]
    fn long_videos_get_periodic_key_frames_and_decode() {
        let video = pattern::render("x", 64, 64, 61, 10);
        let settings = VideoConfig {
            keyframe_interval_s: 1,
            ..VideoConfig::default()
        };
        let info = probe(&encode(&video, &settings).expect("encode")).expect("probe");
        assert_eq!(info.decoded_frames, 61);
    }

    #[test]
    fn a_higher_bitrate_setting_gives_a_larger_file_for_busy_content() {
        // Noise cannot be compressed much, so the size follows the configured bitrate (without
        // frame skipping OpenH264 overshoots low targets, hence the loose 1.5× bound).
        let (width, height, frames) = (128u32, 96u32, 20u32);
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let frames = (0..frames)
            .map(|_| {
                (0..width * height * 3)
                    .map(|_| {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        (seed >> 56) as u8
                    })
                    .collect()
            })
            .collect();
        let video = Video {
            width,
            height,
            fps: 10,
            frames,
        };
        let size = |bits_per_pixel| {
            let settings = VideoConfig {
                bits_per_pixel,
                min_bitrate_bps: 1,
                ..VideoConfig::default()
            };
            encode(&video, &settings).expect("encode").len()
        };
        let (low, high) = (size(0.5), size(4.0));
        assert!(2 * high > 3 * low, "low {low} bytes, high {high} bytes");
    }

    #[test]
    fn refuses_wrong_frame_sizes_and_empty_videos() {
        let mut video = pattern::render("x", 64, 64, 2, 30);
        video.frames[1].pop();
        assert!(matches!(
            encode(&video, &VideoConfig::default()),
            Err(Mp4Error::FrameSize { index: 1, .. })
        ));
        video.frames.clear();
        assert!(matches!(
            encode(&video, &VideoConfig::default()),
            Err(Mp4Error::Shape { .. })
        ));
    }

    #[test]
    fn probe_refuses_garbage_without_panicking() {
        assert!(probe(b"not an mp4 at all").is_err());
        assert!(probe(&[]).is_err());
    }
}
