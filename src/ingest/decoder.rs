//! Which decoder decodes a camera's stream.
//!
//! Selection is a pure function of the codec, the configured choice and a
//! "is this element installed" probe, so the preference order is tested
//! without GStreamer: Jetson's `nvv4l2decoder` (+ `nvvidconv` to leave NVMM
//! memory), then NVDEC on a discrete GPU (`nvh264dec`/`nvh265dec`), then the
//! CPU decoders.

use std::fmt;

use super::IngestError;

/// Video codecs ingest decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Codec {
    H264,
    H265,
    Jpeg,
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Codec::H264 => "H.264",
            Codec::H265 => "H.265",
            Codec::Jpeg => "MJPEG",
        })
    }
}

impl Codec {
    /// From the `encoding-name` of an RTP pad (`H264`, `H265`, `JPEG`).
    pub fn from_rtp_encoding(name: &str) -> Option<Codec> {
        match name.to_ascii_uppercase().as_str() {
            "H264" => Some(Codec::H264),
            "H265" | "HEVC" => Some(Codec::H265),
            "JPEG" => Some(Codec::Jpeg),
            _ => None,
        }
    }

    #[cfg(feature = "gstreamer")]
    pub(crate) fn depayloader(self) -> &'static str {
        match self {
            Codec::H264 => "rtph264depay",
            Codec::H265 => "rtph265depay",
            Codec::Jpeg => "rtpjpegdepay",
        }
    }

    /// Parser between depayloader and decoder; JPEG needs none over RTP.
    #[cfg(feature = "gstreamer")]
    pub(crate) fn parser(self) -> Option<&'static str> {
        match self {
            Codec::H264 => Some("h264parse"),
            Codec::H265 => Some("h265parse"),
            Codec::Jpeg => None,
        }
    }

    /// Caps a decoder's sink template must accept for this codec.
    #[cfg(feature = "gstreamer")]
    pub(crate) fn caps_name(self) -> &'static str {
        match self {
            Codec::H264 => "video/x-h264",
            Codec::H265 => "video/x-h265",
            Codec::Jpeg => "image/jpeg",
        }
    }

    /// Decoders in order of preference, each with the converter it needs.
    fn candidates(self) -> &'static [(&'static str, Option<&'static str>)] {
        match self {
            Codec::H264 => &[
                ("nvv4l2decoder", Some("nvvidconv")),
                ("nvh264dec", None),
                ("avdec_h264", None),
                ("openh264dec", None),
            ],
            Codec::H265 => &[
                ("nvv4l2decoder", Some("nvvidconv")),
                ("nvh265dec", None),
                ("avdec_h265", None),
                ("libde265dec", None),
            ],
            Codec::Jpeg => &[("jpegdec", None), ("avdec_mjpeg", None)],
        }
    }
}

/// The `decoder` setting.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum DecoderChoice {
    /// The best installed decoder for the stream's codec.
    #[default]
    Auto,
    /// This element, or an error at start if it is not installed.
    Element(String),
}

/// The elements that turn a parsed stream into raw video in system memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeChain {
    pub decoder: String,
    /// `nvvidconv` after `nvv4l2decoder`: copies NVMM buffers to system memory.
    pub converter: Option<String>,
}

impl fmt::Display for DecodeChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.converter {
            Some(c) => write!(f, "{} ! {}", self.decoder, c),
            None => f.write_str(&self.decoder),
        }
    }
}

/// Picks the decoder for `codec`. `installed` says whether an element exists.
pub fn select_decoder(
    camera: &str,
    codec: Codec,
    choice: &DecoderChoice,
    installed: impl Fn(&str) -> bool,
) -> Result<DecodeChain, IngestError> {
    match choice {
        DecoderChoice::Element(name) => {
            if !installed(name) {
                return Err(IngestError::DecoderMissing {
                    camera: camera.to_string(),
                    element: name.clone(),
                });
            }
            let converter = (name == "nvv4l2decoder" && installed("nvvidconv"))
                .then(|| "nvvidconv".to_string());
            Ok(DecodeChain {
                decoder: name.clone(),
                converter,
            })
        }
        DecoderChoice::Auto => codec
            .candidates()
            .iter()
            .find(|(dec, conv)| installed(dec) && conv.is_none_or(&installed))
            .map(|(dec, conv)| DecodeChain {
                decoder: dec.to_string(),
                converter: conv.map(str::to_string),
            })
            .ok_or_else(|| IngestError::NoDecoder {
                camera: camera.to_string(),
                codec,
                tried: codec
                    .candidates()
                    .iter()
                    .map(|(d, _)| *d)
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn only(names: &'static [&'static str]) -> impl Fn(&str) -> bool {
        move |n| names.contains(&n)
    }

    #[test]
    fn jetson_prefers_nvv4l2decoder_with_nvvidconv() {
        let chain = select_decoder(
            "c",
            Codec::H264,
            &DecoderChoice::Auto,
            only(&["nvv4l2decoder", "nvvidconv", "avdec_h264"]),
        )
        .expect("chain");
        assert_eq!(chain.to_string(), "nvv4l2decoder ! nvvidconv");
    }

    #[test]
    fn nvv4l2decoder_without_nvvidconv_is_skipped() {
        // DeepStream on x86 ships nvv4l2decoder but not nvvidconv.
        let chain = select_decoder(
            "c",
            Codec::H265,
            &DecoderChoice::Auto,
            only(&["nvv4l2decoder", "nvh265dec", "avdec_h265"]),
        )
        .expect("chain");
        assert_eq!(chain.to_string(), "nvh265dec");
    }

    #[test]
    fn cpu_decoders_are_the_fallback() {
        let chain = select_decoder(
            "c",
            Codec::H264,
            &DecoderChoice::Auto,
            only(&["avdec_h264"]),
        )
        .expect("chain");
        assert_eq!(chain.to_string(), "avdec_h264");
        let chain = select_decoder("c", Codec::Jpeg, &DecoderChoice::Auto, only(&["jpegdec"]))
            .expect("chain");
        assert_eq!(chain.to_string(), "jpegdec");
    }

    #[test]
    fn nothing_installed_names_the_camera_codec_and_candidates() {
        let e = select_decoder("porch", Codec::H265, &DecoderChoice::Auto, only(&[]))
            .expect_err("none");
        let text = e.to_string();
        assert!(
            text.contains("porch") && text.contains("H.265") && text.contains("avdec_h265"),
            "{text}"
        );
    }

    #[test]
    fn an_explicit_decoder_must_exist() {
        let choice = DecoderChoice::Element("nvh264dec".into());
        let e = select_decoder("porch", Codec::H264, &choice, only(&["avdec_h264"]))
            .expect_err("missing");
        assert!(matches!(e, IngestError::DecoderMissing { .. }));
        assert!(e.to_string().contains("nvh264dec"));
        let chain =
            select_decoder("porch", Codec::H264, &choice, only(&["nvh264dec"])).expect("present");
        assert_eq!(chain.to_string(), "nvh264dec");
    }

    #[test]
    fn rtp_encoding_names_map_to_codecs() {
        assert_eq!(Codec::from_rtp_encoding("H264"), Some(Codec::H264));
        assert_eq!(Codec::from_rtp_encoding("h265"), Some(Codec::H265));
        assert_eq!(Codec::from_rtp_encoding("JPEG"), Some(Codec::Jpeg));
        assert_eq!(Codec::from_rtp_encoding("MP4V-ES"), None);
    }
}
