//! The fifteen Florence-2 task tokens as the configuration knows them.
//!
//! This mirrors `crate::florence2::task::Task` (same variants, `ALL`,
//! `token()`, `input()`, `FromStr`) so that the configuration and the
//! scheduler build without the model code; the two can be merged into one
//! type once the crate is wired together.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// What a task needs besides the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskInput {
    /// Nothing: the prompt is fixed.
    None,
    /// Free text (a caption to ground, an expression, a vocabulary).
    Text,
    /// A region of the image.
    Region,
}

/// A Florence-2 task, named by its task token (DESIGN.md §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Task {
    Caption,
    DetailedCaption,
    MoreDetailedCaption,
    ObjectDetection,
    DenseRegionCaption,
    RegionProposal,
    Ocr,
    OcrWithRegion,
    CaptionToPhraseGrounding,
    ReferringExpressionSegmentation,
    RegionToSegmentation,
    OpenVocabularyDetection,
    RegionToCategory,
    RegionToDescription,
    RegionToOcr,
}

/// The task token was not one of the fifteen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown task {given:?}; allowed: {allowed}")]
pub struct UnknownTask {
    pub given: String,
    pub allowed: String,
}

impl Task {
    pub const ALL: [Task; 15] = [
        Task::Caption,
        Task::DetailedCaption,
        Task::MoreDetailedCaption,
        Task::ObjectDetection,
        Task::DenseRegionCaption,
        Task::RegionProposal,
        Task::Ocr,
        Task::OcrWithRegion,
        Task::CaptionToPhraseGrounding,
        Task::ReferringExpressionSegmentation,
        Task::RegionToSegmentation,
        Task::OpenVocabularyDetection,
        Task::RegionToCategory,
        Task::RegionToDescription,
        Task::RegionToOcr,
    ];

    /// The task token as Hugging Face writes it, e.g. `<OD>`.
    pub fn token(self) -> &'static str {
        match self {
            Task::Caption => "<CAPTION>",
            Task::DetailedCaption => "<DETAILED_CAPTION>",
            Task::MoreDetailedCaption => "<MORE_DETAILED_CAPTION>",
            Task::ObjectDetection => "<OD>",
            Task::DenseRegionCaption => "<DENSE_REGION_CAPTION>",
            Task::RegionProposal => "<REGION_PROPOSAL>",
            Task::Ocr => "<OCR>",
            Task::OcrWithRegion => "<OCR_WITH_REGION>",
            Task::CaptionToPhraseGrounding => "<CAPTION_TO_PHRASE_GROUNDING>",
            Task::ReferringExpressionSegmentation => "<REFERRING_EXPRESSION_SEGMENTATION>",
            Task::RegionToSegmentation => "<REGION_TO_SEGMENTATION>",
            Task::OpenVocabularyDetection => "<OPEN_VOCABULARY_DETECTION>",
            Task::RegionToCategory => "<REGION_TO_CATEGORY>",
            Task::RegionToDescription => "<REGION_TO_DESCRIPTION>",
            Task::RegionToOcr => "<REGION_TO_OCR>",
        }
    }

    /// Lower snake case name used in MQTT topics, e.g. `od`, `ocr_with_region`.
    pub fn topic_name(self) -> String {
        self.token()
            .trim_matches(|c| c == '<' || c == '>')
            .to_ascii_lowercase()
    }

    pub fn input(self) -> TaskInput {
        match self {
            Task::CaptionToPhraseGrounding
            | Task::ReferringExpressionSegmentation
            | Task::OpenVocabularyDetection => TaskInput::Text,
            Task::RegionToSegmentation
            | Task::RegionToCategory
            | Task::RegionToDescription
            | Task::RegionToOcr => TaskInput::Region,
            _ => TaskInput::None,
        }
    }

    /// The fifteen tokens, comma separated, for "allowed:" lists.
    fn allowed_list() -> String {
        Task::ALL
            .iter()
            .map(|t| t.token())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.token())
    }
}

impl FromStr for Task {
    type Err = UnknownTask;

    /// Accepts the task token (`<OD>`), with or without brackets, any case,
    /// or the topic name (`od`) — the same rule as the model's task type.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bare = s.trim().trim_start_matches('<').trim_end_matches('>');
        Task::ALL
            .iter()
            .copied()
            .find(|t| t.topic_name().eq_ignore_ascii_case(bare))
            .ok_or_else(|| UnknownTask {
                given: s.to_string(),
                allowed: Task::allowed_list(),
            })
    }
}

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
    fn every_task_round_trips_through_its_token_and_topic_name() {
        for task in Task::ALL {
            assert_eq!(task.token().parse::<Task>(), Ok(task));
            assert_eq!(task.topic_name().parse::<Task>(), Ok(task));
        }
        assert_eq!("od".parse::<Task>(), Ok(Task::ObjectDetection));
    }

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

    #[test]
    fn unknown_task_lists_what_is_allowed() {
        let err = "<DETECT>".parse::<Task>().unwrap_err();
        assert!(err.to_string().contains("<DETECT>"));
        assert!(err.allowed.contains("<OPEN_VOCABULARY_DETECTION>"));
        assert_eq!(err.allowed.matches(", ").count(), 14);
    }
}
