//! `preprocessor_config.json` of a Florence-2 model directory (DESIGN.md §3).
//!
//! Florence-2 checkpoints name `CLIPImageProcessor`; keys a file leaves out take that class's
//! defaults, as `transformers` does. Anything whose reference behaviour this module does not
//! reproduce exactly (other resampling filters, center crop, padding, shortest-edge sizing) is
//! rejected with the file, the key and what is allowed, rather than silently preprocessed
//! differently from the reference.

use std::path::Path;

use serde_json::{Map, Value};

use super::resample::MAX_SIDE;
use super::PreprocessError;

/// `PIL.Image.Resampling.BICUBIC`, the only filter reproduced here.
pub const RESAMPLE_BICUBIC: u32 = 3;

/// `CLIPImageProcessor`'s defaults for keys a file leaves out.
const CLIP_IMAGE_MEAN: [f64; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
const CLIP_IMAGE_STD: [f64; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// The image-processor settings that change pixel values, read from `preprocessor_config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageProcessorConfig {
    /// Output size as (height, width): `size.height`, `size.width`.
    pub size: (u32, u32),
    /// `rescale_factor`, kept in double precision because the reference multiplies in float64
    /// (`image.astype(np.float64) * scale`) before casting to float32; a float32 factor would
    /// round some of the 256 products differently.
    pub rescale_factor: f64,
    /// `image_mean`, as float32 (numpy casts it to the image's dtype before subtracting).
    pub image_mean: [f32; 3],
    /// `image_std`, as float32.
    pub image_std: [f32; 3],
    /// `do_resize`: resize to `size` (otherwise frames must already have that size).
    pub do_resize: bool,
    /// `do_rescale`: multiply by `rescale_factor`.
    pub do_rescale: bool,
    /// `do_normalize`: subtract the mean, divide by the standard deviation.
    pub do_normalize: bool,
    /// `resample`: always [`RESAMPLE_BICUBIC`] once parsed.
    pub resample: u32,
}

impl ImageProcessorConfig {
    /// Florence-2's settings (the values every published checkpoint ships).
    pub fn florence2() -> Self {
        ImageProcessorConfig {
            size: (768, 768),
            rescale_factor: 1.0 / 255.0,
            image_mean: [0.485, 0.456, 0.406],
            image_std: [0.229, 0.224, 0.225],
            do_resize: true,
            do_rescale: true,
            do_normalize: true,
            resample: RESAMPLE_BICUBIC,
        }
    }

    /// Reads and checks a `preprocessor_config.json`.
    pub fn from_json_file(path: impl AsRef<Path>) -> Result<Self, PreprocessError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| PreprocessError::ConfigRead {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses a `preprocessor_config.json` held in memory; errors name it "<inline JSON>".
    pub fn from_json_str(json: &str) -> Result<Self, PreprocessError> {
        Self::parse(json, "<inline JSON>")
    }

    fn parse(json: &str, file: &str) -> Result<Self, PreprocessError> {
        let value: Value =
            serde_json::from_str(json).map_err(|source| PreprocessError::ConfigParse {
                path: file.to_string(),
                source,
            })?;
        let Value::Object(map) = value else {
            return Err(unsupported(file, "(top level)", &value, "a JSON object"));
        };
        let keys = Keys { map: &map, file };

        if let Some(kind) = keys.get("image_processor_type") {
            if kind.as_str() != Some("CLIPImageProcessor") {
                return Err(unsupported(
                    file,
                    "image_processor_type",
                    kind,
                    "\"CLIPImageProcessor\" (the class Florence-2 checkpoints name)",
                ));
            }
        }
        let do_center_crop = keys.bool_or("do_center_crop", true)?;
        if do_center_crop {
            let found = keys.get("do_center_crop").cloned().unwrap_or(Value::Null);
            return Err(unsupported(
                file,
                "do_center_crop",
                &found,
                "false (absent means CLIPImageProcessor's default, true, which is not supported)",
            ));
        }
        if keys.bool_or("do_pad", false)? {
            return Err(unsupported(
                file,
                "do_pad",
                &Value::Bool(true),
                "false or absent",
            ));
        }
        let resample = match keys.get("resample") {
            None => RESAMPLE_BICUBIC,
            Some(v) if v.as_u64() == Some(u64::from(RESAMPLE_BICUBIC)) => RESAMPLE_BICUBIC,
            Some(v) => {
                return Err(unsupported(
                    file,
                    "resample",
                    v,
                    "3 (PIL bicubic), the only filter reproduced bit for bit",
                ))
            }
        };
        let size = keys.size()?;
        let rescale_factor = match keys.get("rescale_factor") {
            None => 1.0 / 255.0,
            Some(v) => match v.as_f64() {
                Some(f) if f.is_finite() && f > 0.0 => f,
                _ => return Err(unsupported(file, "rescale_factor", v, "a positive number")),
            },
        };
        let image_mean = keys.triple("image_mean", CLIP_IMAGE_MEAN, false)?;
        let image_std = keys.triple("image_std", CLIP_IMAGE_STD, true)?;
        Ok(ImageProcessorConfig {
            size,
            rescale_factor,
            image_mean,
            image_std,
            do_resize: keys.bool_or("do_resize", true)?,
            do_rescale: keys.bool_or("do_rescale", true)?,
            do_normalize: keys.bool_or("do_normalize", true)?,
            resample,
        })
    }
}

fn unsupported(file: &str, key: &str, found: &Value, allowed: &str) -> PreprocessError {
    let mut found = found.to_string();
    if found.len() > 80 {
        found.truncate(77);
        found.push_str("...");
    }
    PreprocessError::ConfigUnsupported {
        path: file.to_string(),
        key: key.to_string(),
        found,
        allowed: allowed.to_string(),
    }
}

/// Key lookups that know which file they read, for error messages.
struct Keys<'a> {
    map: &'a Map<String, Value>,
    file: &'a str,
}

impl Keys<'_> {
    /// A key's value; `null` counts as absent, as `transformers` falls back to the default.
    fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn bool_or(&self, key: &str, default: bool) -> Result<bool, PreprocessError> {
        match self.get(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(unsupported(self.file, key, v, "true or false")),
        }
    }

    fn size(&self) -> Result<(u32, u32), PreprocessError> {
        let allowed = "an object {\"height\": H, \"width\": W} with 1 <= H, W <= 32768";
        let Some(v) = self.get("size") else {
            return Err(unsupported(
                self.file,
                "size",
                &Value::Null,
                "{\"height\": H, \"width\": W} (absent means CLIPImageProcessor's shortest-edge \
                 default, which is not supported)",
            ));
        };
        let side = |name: &str| {
            v.get(name)
                .and_then(Value::as_u64)
                .filter(|&n| n >= 1 && n <= u64::from(MAX_SIDE))
                .map(|n| n as u32)
        };
        // Other keys (shortest_edge, longest_edge, ...) may appear as null, as transformers
        // writes its SizeDict; any non-null one changes the sizing rule.
        let set_keys = v
            .as_object()
            .map(|m| m.values().filter(|x| !x.is_null()).count());
        match (set_keys, side("height"), side("width")) {
            (Some(2), Some(h), Some(w)) => Ok((h, w)),
            _ => Err(unsupported(self.file, "size", v, allowed)),
        }
    }

    /// Three per-channel numbers (or one for all channels, as `transformers` allows).
    fn triple(
        &self,
        key: &str,
        default: [f64; 3],
        nonzero: bool,
    ) -> Result<[f32; 3], PreprocessError> {
        let allowed = if nonzero {
            "three non-zero numbers (R, G, B) or one for all channels"
        } else {
            "three numbers (R, G, B) or one for all channels"
        };
        let values = match self.get(key) {
            None => default.to_vec(),
            Some(Value::Array(items)) if items.len() == 3 => {
                items.iter().filter_map(Value::as_f64).collect()
            }
            Some(v @ Value::Number(_)) => v.as_f64().map(|f| vec![f; 3]).unwrap_or_default(),
            Some(_) => Vec::new(),
        };
        // numpy: np.array(mean, dtype=np.float32), i.e. round each double to nearest float32.
        let floats: Vec<f32> = values.iter().map(|&f| f as f32).collect();
        match floats.as_slice() {
            &[r, g, b]
                if floats
                    .iter()
                    .all(|f| f.is_finite() && (!nonzero || *f != 0.0)) =>
            {
                Ok([r, g, b])
            }
            _ => Err(unsupported(
                self.file,
                key,
                self.get(key).unwrap_or(&Value::Null),
                allowed,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The file shipped with microsoft/Florence-2-base-ft and onnx-community/Florence-2-base-ft.
    const FLORENCE2_BASE_FT: &str = r#"{
      "auto_map": {"AutoProcessor": "processing_florence2.Florence2Processor"},
      "_valid_processor_keys": ["images", "do_resize", "size", "resample", "do_rescale",
        "rescale_factor", "do_normalize", "image_mean", "image_std", "return_tensors",
        "data_format", "input_data_format", "do_convert_rgb"],
      "crop_size": {"height": 768, "width": 768},
      "do_center_crop": false,
      "do_convert_rgb": null,
      "do_normalize": true,
      "do_rescale": true,
      "do_resize": true,
      "image_mean": [0.485, 0.456, 0.406],
      "image_processor_type": "CLIPImageProcessor",
      "image_seq_length": 577,
      "image_std": [0.229, 0.224, 0.225],
      "processor_class": "Florence2Processor",
      "resample": 3,
      "rescale_factor": 0.00392156862745098,
      "size": {"height": 768, "width": 768}
    }"#;

    fn with(key: &str, value: &str) -> String {
        let mut v: Value = serde_json::from_str(FLORENCE2_BASE_FT).expect("fixture parses");
        if let Value::Object(map) = &mut v {
            if value.is_empty() {
                map.remove(key);
            } else {
                map.insert(
                    key.into(),
                    serde_json::from_str(value).expect("value parses"),
                );
            }
        }
        v.to_string()
    }

    fn unsupported_key(json: &str) -> String {
        match ImageProcessorConfig::from_json_str(json) {
            Err(PreprocessError::ConfigUnsupported { key, .. }) => key,
            other => panic!("expected an unsupported-key error, got {other:?}"),
        }
    }

    #[test]
    fn reads_florence2_base_ft() {
        let c = ImageProcessorConfig::from_json_str(FLORENCE2_BASE_FT).expect("parse");
        let mut expected = ImageProcessorConfig::florence2();
        expected.rescale_factor = 0.003_921_568_627_450_98;
        assert_eq!(c, expected);
        // The literal in the file and 1/255 are the same double.
        assert_eq!(c.rescale_factor, 1.0 / 255.0);
    }

    #[test]
    fn rejects_what_is_not_reproduced() {
        assert_eq!(unsupported_key(&with("resample", "2")), "resample");
        assert_eq!(
            unsupported_key(&with("do_center_crop", "true")),
            "do_center_crop"
        );
        assert_eq!(
            unsupported_key(&with("do_center_crop", "")),
            "do_center_crop"
        );
        assert_eq!(
            unsupported_key(&with("size", r#"{"shortest_edge": 768}"#)),
            "size"
        );
        assert_eq!(
            unsupported_key(&with("size", r#"{"height": 0, "width": 768}"#)),
            "size"
        );
        assert_eq!(unsupported_key(&with("size", "")), "size");
        assert_eq!(
            unsupported_key(&with(
                "size",
                r#"{"height": 768, "width": 768, "shortest_edge": 5}"#
            )),
            "size"
        );
        let nulls = with(
            "size",
            r#"{"height": 64, "width": 32, "shortest_edge": null}"#,
        );
        let c = ImageProcessorConfig::from_json_str(&nulls).expect("null keys are ignored");
        assert_eq!(c.size, (64, 32));
        assert_eq!(
            unsupported_key(&with("image_std", "[0.2, 0.0, 0.2]")),
            "image_std"
        );
        assert_eq!(
            unsupported_key(&with("image_mean", "[0.2, 0.2]")),
            "image_mean"
        );
        assert_eq!(
            unsupported_key(&with("do_rescale", "\"yes\"")),
            "do_rescale"
        );
        assert_eq!(
            unsupported_key(&with("rescale_factor", "-1")),
            "rescale_factor"
        );
        assert_eq!(
            unsupported_key(&with("image_processor_type", "\"SiglipImageProcessor\"")),
            "image_processor_type"
        );
        assert_eq!(unsupported_key("[1, 2]"), "(top level)");
    }

    #[test]
    fn error_names_file_key_and_allowed_values() {
        let dir = std::env::temp_dir().join(format!("fe-preprocess-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("preprocessor_config.json");
        std::fs::write(&path, with("resample", "2")).expect("write");
        let message = ImageProcessorConfig::from_json_file(&path)
            .expect_err("bilinear is rejected")
            .to_string();
        std::fs::remove_dir_all(&dir).ok();
        assert!(message.contains("preprocessor_config.json"), "{message}");
        assert!(message.contains("resample"), "{message}");
        assert!(message.contains("3 (PIL bicubic)"), "{message}");
        assert!(message.contains("found 2"), "{message}");
    }

    #[test]
    fn defaults_and_nulls_follow_clip_image_processor() {
        let c = ImageProcessorConfig::from_json_str(
            r#"{"size": {"height": 32, "width": 48}, "do_center_crop": false, "do_rescale": null}"#,
        )
        .expect("parse");
        assert_eq!(c.size, (32, 48));
        assert!(c.do_rescale && c.do_resize && c.do_normalize);
        assert_eq!(c.image_mean, [0.481_454_66f32, 0.457_827_5, 0.408_210_73]);
        let one = ImageProcessorConfig::from_json_str(&with("image_mean", "0.5")).expect("parse");
        assert_eq!(one.image_mean, [0.5; 3]);
    }

    #[test]
    fn missing_file_and_bad_json_are_errors() {
        assert!(matches!(
            ImageProcessorConfig::from_json_file("/nonexistent/preprocessor_config.json"),
            Err(PreprocessError::ConfigRead { .. })
        ));
        assert!(matches!(
            ImageProcessorConfig::from_json_str("{"),
            Err(PreprocessError::ConfigParse { .. })
        ));
    }
}
