//! One decoder step: [`OrtStep`] runs the decoder (and, in the split
//! layout, decoder_with_past) for the search in `generate`, keeping the KV
//! cache where the placement puts it between steps.

use std::time::Instant;

use ort::session::IoBinding;
use ort::value::{DynValue, Tensor, TensorElementType};

use super::Florence2;
use crate::florence2::generate::DecoderStep;
use crate::florence2::graphs::{self, DecoderLayout, FloatType, Graph};
use crate::florence2::ModelError;

/// The decoder with its KV cache, one step at a time, through IO bindings:
/// the attention mask and the encoder hidden state are bound once, the
/// cache outputs of each step are bound to the placement's device memory
/// and become the next step's inputs there, and only the logits come back
/// to the host.
pub(super) struct OrtStep<'m> {
    model: &'m mut Florence2,
    rows: usize,
    /// Binding of the decoder: the first step, and every step of the
    /// merged layout.
    first: IoBinding,
    /// Binding of decoder_with_past: the later steps of the split layout.
    later: Option<IoBinding>,
    /// Self-attention cache, per layer (key, value); `None` before step 0.
    decoder_kv: Option<Vec<[DynValue; 2]>>,
    pub(super) steps: usize,
}

impl<'m> OrtStep<'m> {
    pub(super) fn new(
        model: &'m mut Florence2,
        hidden: &DynValue,
        mask: &DynValue,
        rows: usize,
    ) -> Result<Self, ModelError> {
        let bind_static = |graph: &Graph| -> Result<IoBinding, ModelError> {
            let mut b = graph
                .session
                .create_binding()
                .map_err(|e| graph.run_error(e))?;
            b.bind_input("encoder_attention_mask", mask)
                .map_err(|e| graph.run_error(e))?;
            if graph.input("encoder_hidden_states").is_some() {
                b.bind_input("encoder_hidden_states", hidden)
                    .map_err(|e| graph.run_error(e))?;
            }
            Ok(b)
        };
        let first = bind_static(&model.decoder)?;
        let later = match (&model.decoder_with_past, model.layout) {
            (Some(g), DecoderLayout::Split) => Some(bind_static(g)?),
            (None, DecoderLayout::Split) => {
                return Err(ModelError::Input(
                    "split layout without decoder_with_past".into(),
                ))
            }
            (_, DecoderLayout::Merged) => None,
        };
        Ok(Self {
            model,
            rows,
            first,
            later,
            decoder_kv: None,
            steps: 0,
        })
    }

    fn embeds(&mut self, tokens: &[i64]) -> Result<DynValue, ModelError> {
        let e = self.model.embed_ids(tokens.to_vec(), tokens.len())?;
        // Convert only if the embedding graph and the decoder disagree on
        // the element type (e.g. an FP32 embed_tokens with FP16 decoders).
        let want = self.model.embeds_in_type[1];
        let have = if e.dtype().tensor_type() == Some(TensorElementType::Float16) {
            FloatType::F16
        } else {
            FloatType::F32
        };
        if want == have {
            return Ok(e);
        }
        let (shape, data) = graphs::read_f32(&e).map_err(|err| self.model.embed.run_error(err))?;
        graphs::float_tensor(want, shape, &data).map_err(|err| self.model.embed.run_error(err))
    }

    fn empty_kv(&self) -> Result<DynValue, ModelError> {
        let shape = vec![
            self.rows as i64,
            self.model.kv_heads,
            0,
            self.model.kv_head_dim,
        ];
        graphs::float_tensor(self.model.kv_type, shape, &[])
            .map_err(|e| self.model.decoder.run_error(e))
    }
}

impl DecoderStep for OrtStep<'_> {
    type Error = ModelError;

    fn vocab_size(&self) -> usize {
        self.model.vocab_size
    }

    fn step(&mut self, tokens: &[i64], reorder: Option<&[usize]>) -> Result<Vec<f32>, ModelError> {
        if tokens.len() != self.rows {
            return Err(ModelError::Input(format!(
                "{} tokens for {} decoder rows",
                tokens.len(),
                self.rows
            )));
        }
        let embeds = self.embeds(tokens)?;
        if let (Some(order), Some(kv)) = (reorder, self.decoder_kv.as_mut()) {
            if order.iter().enumerate().any(|(i, &r)| i != r) {
                for pair in kv.iter_mut() {
                    for t in pair.iter_mut() {
                        *t = self.model.gather.gather(t, order)?;
                    }
                }
            }
        }
        let first = self.decoder_kv.is_none();
        let merged = self.model.layout == DecoderLayout::Merged;
        let empty = if merged && first {
            Some(self.empty_kv()?)
        } else {
            None
        };

        let model = &mut *self.model;
        let (graph, binding): (&mut Graph, &mut IoBinding) = if first || merged {
            (&mut model.decoder, &mut self.first)
        } else {
            match (model.decoder_with_past.as_mut(), self.later.as_mut()) {
                (Some(g), Some(b)) => (g, b),
                _ => {
                    return Err(ModelError::Input(
                        "split layout without decoder_with_past".into(),
                    ))
                }
            }
        };
        let path = graph.path.clone();
        let run_err = |e: ort::Error| ModelError::Run {
            path: path.clone(),
            reason: e.to_string(),
        };
        binding
            .bind_input("inputs_embeds", &embeds)
            .map_err(run_err)?;
        if merged {
            let use_cache = Tensor::from_array((vec![1i64], vec![!first])).map_err(run_err)?;
            binding
                .bind_input("use_cache_branch", &use_cache)
                .map_err(run_err)?;
        }
        for (i, layer) in model.kv.iter().enumerate() {
            for j in 0..2 {
                match (&self.decoder_kv, &empty) {
                    (Some(kv), _) => binding.bind_input(&layer.past_decoder[j], &kv[i][j]),
                    // The merged graph's first step takes an empty cache;
                    // its cross-attention cache is bound after the step.
                    (None, Some(e)) => binding
                        .bind_input(&layer.past_decoder[j], e)
                        .and_then(|_| binding.bind_input(&layer.past_encoder[j], e)),
                    (None, None) => Ok(()),
                }
                .map_err(run_err)?;
            }
        }
        // Outputs are bound afresh every step: a bound output keeps the
        // previous step's tensor, which ONNX Runtime would otherwise write
        // into — and that tensor is this step's past.
        binding.clear_outputs();
        let device = model.placement.device();
        binding
            .bind_output_to_device("logits", model.placement.host())
            .map_err(run_err)?;
        for layer in &model.kv {
            for name in &layer.present_decoder {
                binding
                    .bind_output_to_device(name, device)
                    .map_err(run_err)?;
            }
            if first {
                // The cross-attention cache is computed once; later steps'
                // present.*.encoder.* (empty constants in the merged graph)
                // are not fetched.
                for name in &layer.present_encoder {
                    binding
                        .bind_output_to_device(name, device)
                        .map_err(run_err)?;
                }
            }
        }
        let start = Instant::now();
        let out = graph.session.run_binding(binding);
        let elapsed = start.elapsed();
        let mut out = out.map_err(run_err)?;
        let mut take = |name: &str| {
            out.remove(name).ok_or_else(|| ModelError::Run {
                path: path.clone(),
                reason: format!("no output {name}"),
            })
        };
        let logits = take("logits")?;
        let mut new_dec = Vec::with_capacity(model.kv.len());
        let mut new_enc = Vec::new();
        for layer in &model.kv {
            new_dec.push([
                take(&layer.present_decoder[0])?,
                take(&layer.present_decoder[1])?,
            ]);
            if first {
                new_enc.push([
                    take(&layer.present_encoder[0])?,
                    take(&layer.present_encoder[1])?,
                ]);
            }
        }
        drop(out);
        model.session_time += elapsed;
        if first {
            // Bound once, for every later step, where it already lives.
            let later = if merged {
                &mut self.first
            } else {
                self.later.as_mut().ok_or_else(|| {
                    ModelError::Input("split layout without decoder_with_past".into())
                })?
            };
            for (layer, kv) in model.kv.iter().zip(&new_enc) {
                for (name, value) in layer.past_encoder.iter().zip(kv) {
                    later.bind_input(name, value).map_err(run_err)?;
                }
            }
        }
        self.decoder_kv = Some(new_dec);
        self.steps += 1;

        let (shape, data) = graphs::read_f32(&logits).map_err(run_err)?;
        let (rows, t, v) = (shape[0] as usize, shape[1] as usize, shape[2] as usize);
        if rows != self.rows || v != model.vocab_size || t == 0 {
            return Err(ModelError::Run {
                path,
                reason: format!(
                    "logits of shape {shape:?}; expected [{}, t, {}]",
                    self.rows, model.vocab_size
                ),
            });
        }
        let mut last = Vec::with_capacity(rows * v);
        for r in 0..rows {
            let start = (r * t + t - 1) * v;
            last.extend_from_slice(&data[start..start + v]);
        }
        Ok(last)
    }
}
