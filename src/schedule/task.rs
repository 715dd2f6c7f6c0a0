//! A scheduled task: the model's [`Task`] plus the input it carries.

use std::fmt;
use std::sync::Arc;

pub use crate::florence2::task::{Task, TaskInput, UnknownTask};

/// A rectangle of the frame in whole pixels, `[x1, y1, x2, y2]` with
/// `x1 < x2` and `y1 < y2`. Whole pixels keep it hashable (it is part of a
/// job's identity) and lose nothing: the model quantizes to 1/1000 of the
/// frame anyway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Region {
    pub x1: u32,
    pub y1: u32,
    pub x2: u32,
    pub y2: u32,
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}, {}, {}, {}]", self.x1, self.y1, self.x2, self.y2)
    }
}

/// The input a configured task carries, checked against [`Task::input`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TaskArgument {
    None,
    /// Shared: every job of this task carries the same text.
    Text(Arc<str>),
    Region(Region),
}

impl TaskArgument {
    /// The free text, for the model's request.
    pub fn text(&self) -> Option<&str> {
        match self {
            TaskArgument::Text(text) => Some(text),
            _ => None,
        }
    }

    /// The region as `[x1, y1, x2, y2]` pixels, the model request's form.
    pub fn region_pixels(&self) -> Option<[f64; 4]> {
        match self {
            TaskArgument::Region(r) => Some([r.x1, r.y1, r.x2, r.y2].map(f64::from)),
            _ => None,
        }
    }
}

impl fmt::Display for TaskArgument {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TaskArgument::None => Ok(()),
            TaskArgument::Text(text) => write!(f, "{text:?}"),
            TaskArgument::Region(region) => region.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_follow_the_reference_table() {
        let text: Vec<_> = Task::ALL
            .into_iter()
            .filter(|t| t.input() == TaskInput::Text)
            .collect();
        let region: Vec<_> = Task::ALL
            .into_iter()
            .filter(|t| t.input() == TaskInput::Region)
            .collect();
        assert_eq!(
            text,
            [
                Task::CaptionToPhraseGrounding,
                Task::ReferringExpressionSegmentation,
                Task::OpenVocabularyDetection
            ]
        );
        assert_eq!(
            region,
            [
                Task::RegionToSegmentation,
                Task::RegionToCategory,
                Task::RegionToDescription,
                Task::RegionToOcr
            ]
        );
    }

    #[test]
    fn arguments_give_the_model_its_text_or_region() {
        let text = TaskArgument::Text(Arc::from("a red car"));
        assert_eq!(text.text(), Some("a red car"));
        assert_eq!(text.region_pixels(), None);
        let region = TaskArgument::Region(Region {
            x1: 1,
            y1: 2,
            x2: 30,
            y2: 40,
        });
        assert_eq!(region.region_pixels(), Some([1.0, 2.0, 30.0, 40.0]));
        assert_eq!(region.to_string(), "[1, 2, 30, 40]");
        assert_eq!(TaskArgument::None.text(), None);
    }
}
