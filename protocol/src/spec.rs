//! `JobSpec`, what a client asks for, and its validation against [`Limits`].

use serde::{Deserialize, Serialize};

use crate::error::ErrorCode;
use crate::shape::JobShape;

/// Default denoising steps (Mochi-1's reference setting).
pub const DEFAULT_STEPS: u32 = 64;
/// Default classifier-free guidance scale (the diffusers pipeline's default).
pub const DEFAULT_GUIDANCE_SCALE: f32 = 4.5;
/// Default frames per second (Mochi-1 is trained at 30 fps).
pub const DEFAULT_FPS: u32 = 30;
/// Default frame count when neither a duration nor a frame count is given (about 1 s).
pub const DEFAULT_NUM_FRAMES: u32 = 31;
/// Width and height must be multiples of this (VAE ×8, then 2×2 patches).
pub const DIMENSION_MULTIPLE: u32 = 16;

/// A resolution preset.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Resolution {
    /// 848×480, Mochi-1's native resolution (the default).
    #[serde(rename = "480p")]
    P480,
    /// 480×848, portrait.
    #[serde(rename = "480p-portrait")]
    P480Portrait,
    /// 1280×720.
    #[serde(rename = "720p")]
    P720,
    /// 720×1280, portrait.
    #[serde(rename = "720p-portrait")]
    P720Portrait,
}

impl Resolution {
    /// Width and height in pixels.
    pub fn dimensions(self) -> (u32, u32) {
        match self {
            Self::P480 => (848, 480),
            Self::P480Portrait => (480, 848),
            Self::P720 => (1280, 720),
            Self::P720Portrait => (720, 1280),
        }
    }
}

/// Scheduling priority a client may request.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// Background work.
    Low,
    /// The default.
    #[default]
    Normal,
    /// Interactive work.
    High,
}

/// What a client asks for. JSON at the edge; every field but `prompt` is optional.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// What the video should show.
    pub prompt: String,
    /// What it should not show; empty means the unconditional branch of guidance.
    #[serde(default)]
    pub negative_prompt: String,
    /// Length in seconds; excludes `num_frames`.
    #[serde(default)]
    pub duration_s: Option<f32>,
    /// Length in frames (rounded up to 6k+1); excludes `duration_s`.
    #[serde(default)]
    pub num_frames: Option<u32>,
    /// Frames per second of the output.
    #[serde(default)]
    pub fps: Option<u32>,
    /// A resolution preset; excludes `width`/`height`.
    #[serde(default)]
    pub resolution: Option<Resolution>,
    /// Width in pixels, a multiple of 16; goes with `height`.
    #[serde(default)]
    pub width: Option<u32>,
    /// Height in pixels, a multiple of 16; goes with `width`.
    #[serde(default)]
    pub height: Option<u32>,
    /// Denoising steps.
    #[serde(default)]
    pub steps: Option<u32>,
    /// Classifier-free guidance scale; 1.0 disables guidance.
    #[serde(default)]
    pub guidance_scale: Option<f32>,
    /// Random seed; the service picks and records one when absent.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Scheduling priority.
    #[serde(default)]
    pub priority: Priority,
}

impl JobSpec {
    /// A spec with only a prompt; everything else takes its default.
    pub fn new(prompt: impl Into<String>) -> Self {
        Self {
            prompt: prompt.into(),
            negative_prompt: String::new(),
            duration_s: None,
            num_frames: None,
            fps: None,
            resolution: None,
            width: None,
            height: None,
            steps: None,
            guidance_scale: None,
            seed: None,
            priority: Priority::Normal,
        }
    }

    /// Checks every field against `limits` and computes the job's shape.
    pub fn validate(&self, limits: &Limits) -> Result<JobShape, SpecError> {
        check_text("prompt", &self.prompt, limits.max_prompt_chars, true)?;
        check_text(
            "negative_prompt",
            &self.negative_prompt,
            limits.max_prompt_chars,
            false,
        )?;
        let fps = self.fps.unwrap_or(DEFAULT_FPS);
        check_range("fps", f64::from(fps), 1.0, f64::from(limits.max_fps))?;
        let requested_frames = match (self.duration_s, self.num_frames) {
            (Some(_), Some(_)) => {
                return Err(SpecError::Conflicting {
                    field: "num_frames",
                    other: "duration_s",
                });
            }
            (Some(duration_s), None) => {
                let max_s = f64::from(limits.max_num_frames) / f64::from(fps);
                if !duration_s.is_finite() {
                    return Err(SpecError::OutOfRange {
                        field: "duration_s",
                        min: 0.0,
                        max: max_s,
                    });
                }
                check_range(
                    "duration_s",
                    f64::from(duration_s),
                    1.0 / f64::from(fps),
                    max_s,
                )?;
                // Saturating float-to-int cast; the range check above bounds it.
                (f64::from(duration_s) * f64::from(fps)).round() as u32
            }
            (None, Some(frames)) => frames,
            (None, None) => DEFAULT_NUM_FRAMES,
        };
        check_range(
            "num_frames",
            f64::from(requested_frames),
            1.0,
            f64::from(limits.max_num_frames),
        )?;
        let num_frames = round_up_to_6k_plus_1(requested_frames);
        if num_frames > limits.max_num_frames {
            return Err(SpecError::OutOfRange {
                field: "num_frames",
                min: 1.0,
                max: f64::from(limits.max_num_frames),
            });
        }
        let (width, height) = self.dimensions()?;
        for (field, value, max) in [
            ("width", width, limits.max_width),
            ("height", height, limits.max_height),
        ] {
            if value % DIMENSION_MULTIPLE != 0 {
                return Err(SpecError::NotMultiple {
                    field,
                    value,
                    multiple: DIMENSION_MULTIPLE,
                });
            }
            check_range(
                field,
                f64::from(value),
                f64::from(limits.min_dimension),
                f64::from(max),
            )?;
        }
        if u64::from(width) * u64::from(height) > limits.max_pixels {
            return Err(SpecError::TooManyPixels {
                width,
                height,
                max_pixels: limits.max_pixels,
            });
        }
        let steps = self.steps.unwrap_or(DEFAULT_STEPS);
        check_range("steps", f64::from(steps), 1.0, f64::from(limits.max_steps))?;
        let guidance_scale = self.guidance_scale.unwrap_or(DEFAULT_GUIDANCE_SCALE);
        if !guidance_scale.is_finite() {
            return Err(SpecError::OutOfRange {
                field: "guidance_scale",
                min: 1.0,
                max: f64::from(limits.max_guidance_scale),
            });
        }
        check_range(
            "guidance_scale",
            f64::from(guidance_scale),
            1.0,
            f64::from(limits.max_guidance_scale),
        )?;
        Ok(JobShape::new(
            num_frames,
            fps,
            width,
            height,
            steps,
            guidance_scale > 1.0,
        ))
    }

    fn dimensions(&self) -> Result<(u32, u32), SpecError> {
        match (self.resolution, self.width, self.height) {
            (Some(_), Some(_), _) => Err(SpecError::Conflicting {
                field: "width",
                other: "resolution",
            }),
            (Some(_), _, Some(_)) => Err(SpecError::Conflicting {
                field: "height",
                other: "resolution",
            }),
            (Some(preset), None, None) => Ok(preset.dimensions()),
            (None, Some(width), Some(height)) => Ok((width, height)),
            (None, Some(_), None) => Err(SpecError::Missing {
                field: "height",
                with: "width",
            }),
            (None, None, Some(_)) => Err(SpecError::Missing {
                field: "width",
                with: "height",
            }),
            (None, None, None) => Ok(Resolution::P480.dimensions()),
        }
    }
}

/// Rounds a frame count up to Mochi's `6k + 1` rule (1, 7, 13, ..., 163, ...).
pub fn round_up_to_6k_plus_1(frames: u32) -> u32 {
    let frames = frames.max(1);
    (frames - 1).div_ceil(6) * 6 + 1
}

fn check_text(
    field: &'static str,
    text: &str,
    max_chars: u32,
    required: bool,
) -> Result<(), SpecError> {
    if required && text.chars().all(is_invisible) {
        return Err(SpecError::Empty { field });
    }
    let chars = text.chars().count();
    if chars > max_chars as usize {
        return Err(SpecError::TooLong {
            field,
            chars: chars as u64,
            max_chars,
        });
    }
    if text
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\t' | '\r'))
    {
        return Err(SpecError::ControlCharacter { field });
    }
    Ok(())
}

/// Whether `c` shows nothing on its own: white space, format characters (zero-width
/// spaces and joiners, the byte-order mark, direction marks), and combining marks, which
/// only change the character before them.
fn is_invisible(c: char) -> bool {
    c.is_whitespace()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{034F}'
                | '\u{061C}'
                | '\u{115F}'
                | '\u{1160}'
                | '\u{180E}'
                | '\u{200B}'..='\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{206F}'
                | '\u{3164}'
                | '\u{FE00}'..='\u{FE0F}'
                | '\u{FEFF}'
                | '\u{FFA0}'
                | '\u{0300}'..='\u{036F}'
                | '\u{1AB0}'..='\u{1AFF}'
                | '\u{1DC0}'..='\u{1DFF}'
                | '\u{20D0}'..='\u{20FF}'
                | '\u{FE20}'..='\u{FE2F}'
                | '\u{E0000}'..='\u{E007F}'
        )
}

/// A limit as people write it: at most three decimals, no trailing zeros
/// (`0.03333333333333333` → `0.033`, `10.0` → `10`).
fn readable(value: f64) -> String {
    let text = format!("{value:.3}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text == "0" && value > 0.0 {
        format!("{value:.1e}")
    } else {
        text.to_owned()
    }
}

fn check_range(field: &'static str, value: f64, min: f64, max: f64) -> Result<(), SpecError> {
    if value < min || value > max {
        return Err(SpecError::OutOfRange { field, min, max });
    }
    Ok(())
}

/// Limits every job is checked against, at the gateway and again at intake.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Longest prompt (and negative prompt), in characters.
    pub max_prompt_chars: u32,
    /// Most frames in one video (301 is 10 s at 30 fps).
    pub max_num_frames: u32,
    /// Highest frame rate.
    pub max_fps: u32,
    /// Smallest width or height.
    pub min_dimension: u32,
    /// Largest width.
    pub max_width: u32,
    /// Largest height.
    pub max_height: u32,
    /// Largest width × height.
    pub max_pixels: u64,
    /// Most denoising steps.
    pub max_steps: u32,
    /// Largest guidance scale.
    pub max_guidance_scale: f32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_prompt_chars: 2000,
            max_num_frames: 301,
            max_fps: 60,
            min_dimension: 64,
            max_width: 1280,
            max_height: 1280,
            max_pixels: 1280 * 720,
            max_steps: 200,
            max_guidance_scale: 20.0,
        }
    }
}

/// Why a `JobSpec` was refused. Each variant names the field and what is allowed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpecError {
    /// A required text field is empty.
    #[error(
        "{field} must not be blank (spaces and invisible characters only): describe the video you want"
    )]
    Empty {
        /// The field.
        field: &'static str,
    },
    /// A text field is too long.
    #[error("{field} has {chars} characters; shorten it to at most {max_chars}")]
    TooLong {
        /// The field.
        field: &'static str,
        /// Its length.
        chars: u64,
        /// The limit.
        max_chars: u32,
    },
    /// A text field contains control characters.
    #[error("{field} contains control characters; remove them")]
    ControlCharacter {
        /// The field.
        field: &'static str,
    },
    /// A number is outside its allowed range.
    #[error("{field} must be between {} and {}", readable(*min), readable(*max))]
    OutOfRange {
        /// The field.
        field: &'static str,
        /// Smallest allowed value.
        min: f64,
        /// Largest allowed value.
        max: f64,
    },
    /// A dimension is not a multiple of 16.
    #[error("{field} is {value}; it must be a multiple of {multiple} (e.g. {})", nearest_multiple(*value, *multiple))]
    NotMultiple {
        /// The field.
        field: &'static str,
        /// The value given.
        value: u32,
        /// The required multiple.
        multiple: u32,
    },
    /// Width × height is too large.
    #[error("{width}x{height} has {} pixels; the limit is {max_pixels} (e.g. 1280x720)", u64::from(*width) * u64::from(*height))]
    TooManyPixels {
        /// Width given.
        width: u32,
        /// Height given.
        height: u32,
        /// The limit.
        max_pixels: u64,
    },
    /// Two fields that exclude each other were both given.
    #[error("give either {field} or {other}, not both")]
    Conflicting {
        /// The field reported.
        field: &'static str,
        /// The field it conflicts with.
        other: &'static str,
    },
    /// A field was given without its partner.
    #[error("{field} is required when {with} is given")]
    Missing {
        /// The missing field.
        field: &'static str,
        /// The field that needs it.
        with: &'static str,
    },
}

fn nearest_multiple(value: u32, multiple: u32) -> u32 {
    (value / multiple).max(1) * multiple
}

impl SpecError {
    /// The stable error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Conflicting { .. } => ErrorCode::ConflictingFields,
            _ => ErrorCode::InvalidField,
        }
    }

    /// The request field at fault.
    pub fn field(&self) -> &'static str {
        match self {
            Self::Empty { field }
            | Self::TooLong { field, .. }
            | Self::ControlCharacter { field }
            | Self::OutOfRange { field, .. }
            | Self::NotMultiple { field, .. }
            | Self::Conflicting { field, .. }
            | Self::Missing { field, .. } => field,
            Self::TooManyPixels { .. } => "width",
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_prompt_of_invisible_characters_only_is_blank() {
        for prompt in [
            "\u{200B}",
            "\u{FEFF} \u{200B}",
            "\u{0301}",
            " \t\u{2060}\u{3000}",
        ] {
            let error = JobSpec::new(prompt)
                .validate(&Limits::default())
                .expect_err("blank");
            assert_eq!(error, SpecError::Empty { field: "prompt" }, "{prompt:?}");
        }
        assert!(
            JobSpec::new("e\u{0301}")
                .validate(&Limits::default())
                .is_ok()
        );
        assert!(
            JobSpec::new("\u{200B}猫")
                .validate(&Limits::default())
                .is_ok()
        );
    }

    #[test]
    fn range_messages_round_limits_for_people() {
        let mut spec = JobSpec::new("x");
        spec.duration_s = Some(0.001);
        let message = spec
            .validate(&Limits::default())
            .expect_err("too short")
            .to_string();
        assert!(message.contains("between 0.033 and 10.033"), "{message}");
        assert_eq!(readable(20.0), "20");
        assert_eq!(readable(0.5), "0.5");
        assert_eq!(readable(1e-5), "1.0e-5");
    }

    use super::*;

    fn valid(spec: &JobSpec) -> JobShape {
        spec.validate(&Limits::default())
            .expect("spec should be valid")
    }

    fn refused(spec: &JobSpec) -> SpecError {
        spec.validate(&Limits::default())
            .expect_err("spec should be refused")
    }

    #[test]
    fn defaults_give_480p_31_frames() {
        let shape = valid(&JobSpec::new("a cat"));
        assert_eq!(
            (shape.width, shape.height, shape.num_frames, shape.fps),
            (848, 480, 31, 30)
        );
        assert_eq!(shape.steps, DEFAULT_STEPS);
        assert!(shape.cfg);
    }

    #[test]
    fn frames_round_up_to_6k_plus_1() {
        assert_eq!(round_up_to_6k_plus_1(0), 1);
        assert_eq!(round_up_to_6k_plus_1(1), 1);
        assert_eq!(round_up_to_6k_plus_1(2), 7);
        assert_eq!(round_up_to_6k_plus_1(7), 7);
        assert_eq!(round_up_to_6k_plus_1(160), 163);
        assert_eq!(round_up_to_6k_plus_1(163), 163);
    }

    #[test]
    fn duration_becomes_frames() {
        let spec = JobSpec {
            duration_s: Some(2.0),
            fps: Some(24),
            ..JobSpec::new("x")
        };
        assert_eq!(valid(&spec).num_frames, 49);
    }

    #[test]
    fn rejects_empty_prompt() {
        let error = refused(&JobSpec::new("   "));
        assert_eq!(error.field(), "prompt");
        assert_eq!(error.code(), ErrorCode::InvalidField);
    }

    #[test]
    fn rejects_width_not_multiple_of_16_and_suggests_one() {
        let spec = JobSpec {
            width: Some(850),
            height: Some(480),
            ..JobSpec::new("x")
        };
        let error = refused(&spec);
        assert_eq!(error.field(), "width");
        assert!(error.to_string().contains("multiple of 16"), "{error}");
        assert!(error.to_string().contains("848"), "{error}");
    }

    #[test]
    fn rejects_steps_out_of_range_naming_the_range() {
        let error = refused(&JobSpec {
            steps: Some(0),
            ..JobSpec::new("x")
        });
        assert_eq!(error.field(), "steps");
        assert_eq!(error.to_string(), "steps must be between 1 and 200");
    }

    #[test]
    fn rejects_both_duration_and_frames() {
        let spec = JobSpec {
            duration_s: Some(1.0),
            num_frames: Some(31),
            ..JobSpec::new("x")
        };
        assert_eq!(refused(&spec).code(), ErrorCode::ConflictingFields);
    }

    #[test]
    fn rejects_nan_guidance_and_duration() {
        let error = refused(&JobSpec {
            guidance_scale: Some(f32::NAN),
            ..JobSpec::new("x")
        });
        assert_eq!(error.field(), "guidance_scale");
        let error = refused(&JobSpec {
            duration_s: Some(f32::INFINITY),
            ..JobSpec::new("x")
        });
        assert_eq!(error.field(), "duration_s");
    }

    #[test]
    fn rejects_frames_that_round_past_the_limit() {
        let limits = Limits {
            max_num_frames: 300,
            ..Limits::default()
        };
        let spec = JobSpec {
            num_frames: Some(299),
            ..JobSpec::new("x")
        };
        assert_eq!(
            spec.validate(&limits).expect_err("over").field(),
            "num_frames"
        );
    }

    #[test]
    fn rejects_unknown_json_fields() {
        let error = serde_json::from_str::<JobSpec>(r#"{"prompt":"x","colour":"red"}"#)
            .expect_err("unknown");
        assert!(error.to_string().contains("colour"));
    }

    #[test]
    fn rejects_preset_with_explicit_width() {
        let spec = JobSpec {
            resolution: Some(Resolution::P720),
            width: Some(640),
            ..JobSpec::new("x")
        };
        assert_eq!(refused(&spec).field(), "width");
    }
}
