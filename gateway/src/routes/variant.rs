//! The variants of a job's content: the MP4 and its two JPEG previews.

use protocol::ErrorCode;
use protocol::record::VideoResult;

use crate::auth::signing::VARIANT_VIDEO;
use crate::error::ApiError;

/// What a content request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// The MP4.
    Video,
    /// The middle frame, JPEG.
    Thumbnail,
    /// Evenly spaced frames in a grid, JPEG.
    Spritesheet,
}

impl Variant {
    /// The name in `?variant=` (and in a signed link's signature).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Video => VARIANT_VIDEO,
            Self::Thumbnail => "thumbnail",
            Self::Spritesheet => "spritesheet",
        }
    }

    pub(crate) fn parse(name: Option<&str>) -> Result<Self, ApiError> {
        match name {
            None | Some(VARIANT_VIDEO) => Ok(Self::Video),
            Some("thumbnail") => Ok(Self::Thumbnail),
            Some("spritesheet") => Ok(Self::Spritesheet),
            Some(_) => Err(ApiError::field(
                ErrorCode::InvalidField,
                "variant must be video, thumbnail or spritesheet",
                "variant",
            )),
        }
    }

    pub(crate) fn content_type(self) -> &'static str {
        match self {
            Self::Video => "video/mp4",
            Self::Thumbnail | Self::Spritesheet => "image/jpeg",
        }
    }

    /// The object holding this variant of `result`.
    pub(crate) fn object(self, result: &VideoResult) -> String {
        match self {
            Self::Video => result.object_name.clone(),
            Self::Thumbnail => result.thumbnail_object(),
            Self::Spritesheet => result.spritesheet_object(),
        }
    }

    pub(crate) fn file_name(self, job_id: protocol::JobId) -> String {
        match self {
            Self::Video => format!("{job_id}.mp4"),
            Self::Thumbnail => format!("{job_id}-thumbnail.jpg"),
            Self::Spritesheet => format!("{job_id}-spritesheet.jpg"),
        }
    }
}
