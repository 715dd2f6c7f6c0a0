//! The inference thread: owns the model, runs each batch and hands the
//! results on.

use super::*;

pub(super) struct InferenceContext {
    pub(super) node: String,
    /// This run's id, in every result beside its sequence number.
    pub(super) run_id: Arc<str>,
    pub(super) decoding: Decoding,
    pub(super) done: Sender<Msg>,
    pub(super) stats: Arc<Mutex<DaemonStats>>,
    pub(super) liveness: Arc<Liveness>,
    /// Fault injection: sleep forever on the first batch.
    pub(super) wedge: bool,
}

pub(super) fn inference_thread(
    opts: LoadOptions,
    ctx: InferenceContext,
    batches: Receiver<Vec<FrameJob>>,
    ready: Sender<Result<ModelInfo, crate::florence2::ModelError>>,
    sink: SharedSink,
) {
    let mut engine = match Pipeline::load(&opts) {
        Ok(e) => e,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let model_id = opts
        .dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| opts.dir.display().to_string());
    let info = crate::publish::ModelInfo {
        id: model_id.clone(),
        precision: engine.model.variant.name().to_string(),
        backend: format!("onnxruntime-{}", engine.model.backend.backend),
    };
    let _ = ready.send(Ok(ModelInfo {
        model_id,
        backend: info.backend.clone(),
        variant: info.precision.clone(),
    }));
    let mut result_seq: HashMap<(Arc<str>, crate::florence2::Task), u64> = HashMap::new();
    for batch in batches {
        ctx.liveness.batch_started();
        if ctx.wedge {
            tracing::warn!("Fault injection: the inference thread wedges now.");
            loop {
                thread::sleep(Duration::from_secs(3600));
            }
        }
        let dispatched = Instant::now();
        let n = batch.len();
        let mut outcomes = Vec::with_capacity(n);
        // Items whose request does not fit their frame (a region outside a
        // resized stream) or the model (a prompt too long for its position
        // embeddings) are refused one by one, not with the batch.
        let mut items = Vec::with_capacity(n);
        let mut jobs = Vec::with_capacity(n);
        for job in &batch {
            let f = &job.frame;
            let frame = match RgbFrame::new(f.width, f.height, f.stride, &f.data) {
                Ok(fr) => fr,
                Err(e) => {
                    job_failed(&ctx, job, "frame", e.to_string(), &mut outcomes);
                    continue;
                }
            };
            let req = TaskRequest {
                task: job.key.task,
                text: job.key.argument.text().map(str::to_string),
                region: job.key.argument.region_pixels(),
            };
            if let Err(e) = engine.prompt_ids(&req, f.width, f.height) {
                let reason = match e {
                    crate::florence2::ModelError::PromptTooLong { .. } => "prompt_too_long",
                    _ => "input",
                };
                job_failed(&ctx, job, reason, e.to_string(), &mut outcomes);
                continue;
            }
            items.push((frame, req));
            jobs.push(job);
        }
        // A batch that fails is retried in halves: the job that fails is
        // isolated and its neighbours still get their results.
        let results = isolate::run_isolating(&items, &mut |part| {
            ctx.liveness.batch_started();
            engine.run(part, ctx.decoding)
        });
        for (job, r) in jobs.iter().zip(results) {
            let r = match r {
                Ok(r) => r,
                Err(e) => {
                    job_failed(&ctx, job, "inference", e.to_string(), &mut outcomes);
                    continue;
                }
            };
            outcomes.push(JobOutcome {
                key: job.key.clone(),
                error: None,
            });
            let seq = result_seq
                .entry((job.key.camera.clone(), job.key.task))
                .or_insert(0);
            *seq += 1;
            let out =
                result::result_payload(&ctx.node, &ctx.run_id, &info, job, r, *seq, dispatched);
            {
                let mut sink = crate::sync::lock(&sink);
                sink.result_with_frame(&out, &job.frame.frame);
            }
            let end_to_end = SystemTime::now()
                .duration_since(job.frame.captured_at)
                .map_or(0.0, |d| d.as_secs_f64());
            {
                let mut st = crate::sync::lock(&ctx.stats);
                let key = (out.camera.clone(), out.task.clone());
                st.latency
                    .entry(key.clone())
                    .or_default()
                    .observe(&out.latency_ms, end_to_end);
                *st.results.entry(key).or_insert(0) += 1;
            }
        }
        {
            let mut st = crate::sync::lock(&ctx.stats);
            st.postprocess_routes = engine.route_counts();
        }
        ctx.liveness.batch_finished();
        if ctx.done.send(Msg::BatchDone { jobs: n, outcomes }).is_err() {
            break;
        }
    }
}

/// A job that produced no result: counted per camera, task and reason, and
/// reported to the coordinator, which pauses its task and logs the error
/// once per change (a paused task makes no job, so this is not per period).
fn job_failed(
    ctx: &InferenceContext,
    job: &FrameJob,
    reason: &'static str,
    error: String,
    outcomes: &mut Vec<JobOutcome>,
) {
    tracing::debug!(camera = %job.key.camera, task = %job.key.task, reason, error = %error, "No result for this job.");
    {
        let mut st = crate::sync::lock(&ctx.stats);
        st.failed_jobs += 1;
        let key = (
            job.key.camera.to_string(),
            job.key.task.token().to_string(),
            reason,
        );
        *st.job_errors.entry(key).or_insert(0) += 1;
    }
    outcomes.push(JobOutcome {
        key: job.key.clone(),
        error: Some(error),
    });
}
