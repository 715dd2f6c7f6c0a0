//! The fifteen Florence-2 tasks: task token, prompt text, what input they take
//! and how their output is parsed (DESIGN.md §3).

use std::fmt;
use std::str::FromStr;

/// What a task needs besides the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskInput {
    /// Nothing: the prompt is fixed.
    None,
    /// Free text (a caption to ground, an expression, a vocabulary).
    Text,
    /// A region of the image, as `<loc_x1><loc_y1><loc_x2><loc_y2>`.
    Region,
}

/// A Florence-2 task, named by its task token.
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

    /// The prompt template; `{input}` marks where the text or region goes.
    fn template(self) -> &'static str {
        match self {
            Task::Caption => "What does the image describe?",
            Task::DetailedCaption => "Describe in detail what is shown in the image.",
            Task::MoreDetailedCaption => "Describe with a paragraph what is shown in the image.",
            Task::ObjectDetection => "Locate the objects with category name in the image.",
            Task::DenseRegionCaption => "Locate the objects in the image, with their descriptions.",
            Task::RegionProposal => "Locate the region proposals in the image.",
            Task::Ocr => "What is the text in the image?",
            Task::OcrWithRegion => "What is the text in the image, with regions?",
            Task::CaptionToPhraseGrounding => "Locate the phrases in the caption: {input}",
            Task::ReferringExpressionSegmentation => "Locate {input} in the image with mask",
            Task::RegionToSegmentation => "What is the polygon mask of region {input}",
            Task::OpenVocabularyDetection => "Locate {input} in the image.",
            Task::RegionToCategory => "What is the region {input}?",
            Task::RegionToDescription => "What does the region {input} describe?",
            Task::RegionToOcr => "What text is in the region {input}?",
        }
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

    /// The prompt text for this task. `input` is the free text, or the region
    /// already written as location tokens. Tasks without input ignore it.
    pub fn prompt(self, input: Option<&str>) -> String {
        let template = self.template();
        match self.input() {
            TaskInput::None => template.to_string(),
            TaskInput::Text | TaskInput::Region => template.replace("{input}", input.unwrap_or("")),
        }
    }

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
    /// or the topic name (`od`).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_round_trips_through_its_token_and_topic_name() {
        for task in Task::ALL {
            assert_eq!(task.token().parse::<Task>(), Ok(task));
            assert_eq!(task.topic_name().parse::<Task>(), Ok(task));
        }
        assert_eq!(Task::OcrWithRegion.topic_name(), "ocr_with_region");
        assert_eq!("od".parse::<Task>(), Ok(Task::ObjectDetection));
    }

    #[test]
    fn unknown_task_lists_what_is_allowed() {
        let err = "<DETECT>".parse::<Task>().unwrap_err();
        assert!(err.to_string().contains("<DETECT>"));
        assert!(err.allowed.contains("<OPEN_VOCABULARY_DETECTION>"));
    }

    #[test]
    fn prompts_match_the_reference_table() {
        assert_eq!(Task::Caption.prompt(None), "What does the image describe?");
        assert_eq!(
            Task::OpenVocabularyDetection.prompt(Some("person with a helmet")),
            "Locate person with a helmet in the image."
        );
        assert_eq!(
            Task::RegionToCategory.prompt(Some("<loc_1><loc_2><loc_3><loc_4>")),
            "What is the region <loc_1><loc_2><loc_3><loc_4>?"
        );
        assert_eq!(
            Task::CaptionToPhraseGrounding.prompt(Some("a red car")),
            "Locate the phrases in the caption: a red car"
        );
        assert_eq!(Task::ObjectDetection.input(), TaskInput::None);
        assert_eq!(Task::RegionToOcr.input(), TaskInput::Region);
    }
}
