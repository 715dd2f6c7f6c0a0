//! The `florence-edge` command line.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

use florence_edge::florence2::{DecoderLayout, LoadOptions, Strategy, Task, Variant};
use florence_edge::hub;
use florence_edge::pipeline::{Decoding, Pipeline, TaskRequest};
use florence_edge::postprocess::{self, ImageSize};
use florence_edge::preprocess::RgbFrame;
use florence_edge::runtime::Backend;

#[derive(Parser)]
#[command(
    name = "florence-edge",
    version,
    about = "Cameras in, Florence-2 results out."
)]
struct Cli {
    /// Log filter (tracing's EnvFilter syntax), e.g. `info`, `florence_edge=debug`.
    #[arg(
        long,
        global = true,
        env = "FLORENCE_EDGE_LOG",
        default_value = "info,ort=warn"
    )]
    log: String,
    /// Log format: `auto` (text; without our own timestamps and colours when
    /// stderr goes to the systemd journal, which adds its own), `text` or
    /// `json` (one object per line with the fields).
    #[arg(
        long,
        global = true,
        env = "FLORENCE_EDGE_LOG_FORMAT",
        value_enum,
        default_value = "auto"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Auto,
    Text,
    Json,
}

/// Whether stderr is the systemd journal: `JOURNAL_STREAM` names its
/// device and inode (systemd.exec(5)); a child whose stderr was redirected
/// elsewhere inherits the variable but not the stream.
fn stderr_is_journal() -> bool {
    let Ok(v) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.split_once(':') else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat fills the stat buffer we own for fd 2.
    if unsafe { libc::fstat(2, st.as_mut_ptr()) } != 0 {
        return false;
    }
    // SAFETY: fstat returned 0, so it initialised the buffer.
    let st = unsafe { st.assume_init() };
    st.st_dev == dev && st.st_ino == ino
}

fn init_logging(filter: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| "info".into());
    // Colour codes only for a person at a terminal: a log file, a pipe or
    // the journal gets plain text (and NO_COLOR is honoured, see no-color.org).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
        LogFormat::Auto if stderr_is_journal() => builder.without_time().init(),
        LogFormat::Auto | LogFormat::Text => builder.init(),
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum DecodingArg {
    Greedy,
    Beam,
}

#[derive(Clone, Copy, ValueEnum)]
enum LayoutArg {
    /// decoder_model + decoder_with_past_model (what TensorRT needs)
    Split,
    /// decoder_model_merged (one graph with an If on use_cache_branch)
    Merged,
}

/// Model and decoding options shared by `infer` and `bench`.
#[derive(clap::Args)]
struct ModelArgs {
    /// Model directory in the onnx-community layout (config.json, tokenizer.json, onnx/…).
    #[arg(long, env = "FLORENCE_EDGE_MODEL")]
    model: PathBuf,
    /// Decoding strategy: greedy (the default for video) or beam search.
    #[arg(long, value_enum, default_value = "greedy")]
    decoding: DecodingArg,
    /// Beams for beam search (default: num_beams from generation_config.json).
    #[arg(long)]
    num_beams: Option<usize>,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    /// Execution backend: auto, tensorrt, cuda or cpu.
    #[arg(long, default_value = "auto")]
    backend: String,
    /// Graph precision variant: fp32, fp16, q4, q4f16, int8, uint8, quantized, bnb4.
    #[arg(long, default_value = "fp32")]
    variant: String,
    /// Decoder graphs: split or merged.
    #[arg(long, value_enum, default_value = "split")]
    decoder: LayoutArg,
    /// Images per batch.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Intra-op threads per ONNX Runtime session (0: one per available core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Path of libonnxruntime.so (else $ORT_DYLIB_PATH, .local/onnxruntime/lib, system locations).
    #[arg(long)]
    ort_lib: Option<PathBuf>,
}

impl ModelArgs {
    fn load(&self) -> Result<(Pipeline, Decoding)> {
        let mut opts = LoadOptions::new(&self.model);
        opts.backend = self.backend.parse::<Backend>()?;
        opts.variant = Variant::parse(&self.variant)?;
        opts.layout = self.decoder.layout();
        opts.ort_library = self.ort_lib.clone();
        opts.intra_threads = self.threads;
        if self.batch == 0 {
            bail!("--batch must be at least 1");
        }
        let engine = Pipeline::load(&opts)?;
        let strategy = match self.decoding {
            DecodingArg::Greedy => Strategy::Greedy,
            DecodingArg::Beam => Strategy::Beam {
                num_beams: self.num_beams.unwrap_or(engine.model.generation.num_beams),
            },
        };
        let decoding = Decoding {
            strategy,
            max_new_tokens: self.max_new_tokens,
        };
        Ok((engine, decoding))
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run one task on image files and print one JSON object per image.
    Infer {
        /// Task token, e.g. '<OD>', '<CAPTION>', '<OCR_WITH_REGION>' (or its topic name, e.g. od).
        #[arg(long)]
        task: String,
        /// Text input for <CAPTION_TO_PHRASE_GROUNDING>, <REFERRING_EXPRESSION_SEGMENTATION>,
        /// <OPEN_VOCABULARY_DETECTION>; or location tokens for the region tasks.
        #[arg(long)]
        text: Option<String>,
        /// Region x1,y1,x2,y2 in pixels for the <REGION_TO_…> tasks.
        #[arg(long, value_parser = parse_region)]
        region: Option<[f64; 4]>,
        #[command(flatten)]
        model_args: ModelArgs,
        /// Image files (PNG, JPEG).
        #[arg(required = true)]
        images: Vec<PathBuf>,
    },
    /// Run the daemon: cameras in, Florence-2 results out.
    Run {
        /// Configuration file (TOML); environment variables FLORENCE_EDGE__SECTION__KEY override it.
        #[arg(
            long,
            env = "FLORENCE_EDGE_CONFIG",
            default_value = "/etc/florence-edge/florence-edge.toml"
        )]
        config: PathBuf,
        /// Also print every result as a JSON line on stdout.
        #[arg(long)]
        stdout: bool,
    },
    /// Check a configuration file and print every problem; exits non-zero if there are any.
    Validate {
        /// Configuration file (TOML).
        #[arg(
            long,
            env = "FLORENCE_EDGE_CONFIG",
            default_value = "/etc/florence-edge/florence-edge.toml"
        )]
        config: PathBuf,
        /// Skip the checks against this machine (model directory, password,
        /// token and TLS files), e.g. for an example file.
        #[arg(long)]
        no_files: bool,
        /// Print the effective configuration (defaults filled in, secrets as
        /// ***) as TOML when the file is valid.
        #[arg(long)]
        print: bool,
    },
    /// Measure per-stage latency and throughput on a synthetic frame; prints JSON.
    Bench {
        /// Task token, e.g. '<OD>'.
        #[arg(long, default_value = "<OD>")]
        task: String,
        /// Text input for the tasks that take one.
        #[arg(long)]
        text: Option<String>,
        /// Synthetic frame size WIDTHxHEIGHT.
        #[arg(long, default_value = "1920x1080")]
        size: String,
        /// Untimed runs first.
        #[arg(long, default_value_t = 1)]
        warmup: usize,
        /// Timed runs.
        #[arg(long, default_value_t = 5)]
        iterations: usize,
        #[command(flatten)]
        model_args: ModelArgs,
    },
    /// Build the TensorRT engines for a configuration ahead of time (minutes on a Jetson),
    /// with progress on stderr; `run` then starts in seconds.
    BuildEngines {
        /// Configuration file (TOML).
        #[arg(
            long,
            env = "FLORENCE_EDGE_CONFIG",
            default_value = "/etc/florence-edge/florence-edge.toml"
        )]
        config: PathBuf,
    },
    /// Install this binary, the systemd unit, the service user and the example configuration.
    InstallService {
        /// Install below this directory instead of / (an image being prepared).
        #[arg(long, default_value = "/")]
        root: PathBuf,
        /// Directory for the binary, as seen from the root; ExecStart= points here.
        #[arg(long, default_value = florence_edge::service::install::DEFAULT_BIN_DIR)]
        bin_dir: PathBuf,
        /// Report what would be done and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Models from the Hugging Face Hub: pull one variant, list what is here, verify a directory.
    Model {
        #[command(subcommand)]
        action: ModelCommand,
    },
    /// Post-process raw decoder text (as the model emits it, special tokens included)
    /// read from stdin, and print the result as JSON.
    Parse {
        /// Task token, e.g. '<OD>'.
        #[arg(long)]
        task: String,
        /// Width of the image the text was generated for, in pixels.
        #[arg(long)]
        width: u32,
        /// Height of the image, in pixels.
        #[arg(long)]
        height: u32,
    },
}

#[derive(Subcommand)]
enum ModelCommand {
    /// Download exactly the files `run` opens for one variant and decoder layout,
    /// verified against the Hub's SHA-256 and sizes; resumes an interrupted pull.
    /// Prints the model directory. Honours HF_ENDPOINT, HF_TOKEN and HF_HOME.
    Pull {
        /// Hub model id, e.g. onnx-community/Florence-2-base-ft.
        repo: String,
        /// Branch, tag or commit.
        #[arg(long, default_value = "main")]
        revision: String,
        /// Graph precision variant: fp32, fp16, q4, q4f16, int8, uint8, quantized, bnb4
        /// (the same names as `[model] precision`).
        #[arg(long, default_value = "fp32")]
        variant: String,
        /// Decoder graphs: split (what TensorRT needs) or merged.
        #[arg(long, value_enum, default_value = "split")]
        decoder: LayoutArg,
        /// Model store (a Hugging Face cache directory); default: HF_HUB_CACHE,
        /// HF_HOME/hub, the service's state directory, ~/.cache/huggingface/hub.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// How often one file's download is resumed within this pull when the
        /// connection breaks.
        #[arg(long, default_value_t = 5)]
        retries: usize,
    },
    /// List the models in a store: repository, revision, commit, verified
    /// variants, variants on disk, size.
    List {
        /// Model store; the same default as `pull`.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Re-hash a model directory's verified files and load it the way `run` does
    /// (on the CPU), for each variant and decoder layout it holds; names every problem.
    Verify {
        /// A model directory (what `pull` printed, or any onnx-community layout directory).
        dir: PathBuf,
        /// Check only this variant (with --decoder).
        #[arg(long)]
        variant: Option<String>,
        /// Decoder layout for --variant.
        #[arg(long, value_enum, default_value = "split")]
        decoder: LayoutArg,
        /// Path of libonnxruntime.so (else $ORT_DYLIB_PATH, .local/onnxruntime/lib, system locations).
        #[arg(long)]
        ort_lib: Option<PathBuf>,
    },
}

impl LayoutArg {
    fn layout(self) -> DecoderLayout {
        match self {
            LayoutArg::Split => DecoderLayout::Split,
            LayoutArg::Merged => DecoderLayout::Merged,
        }
    }
}

fn model_store_dir(dir: Option<PathBuf>) -> Result<PathBuf> {
    match dir {
        Some(d) => Ok(d),
        None => Ok(hub::default_cache_dir()?),
    }
}

fn model_cmd(action: ModelCommand) -> Result<()> {
    match action {
        ModelCommand::Pull {
            repo,
            revision,
            variant,
            decoder,
            dir,
            retries,
        } => {
            let opts = hub::PullOptions {
                model: hub::ModelRef::new(&repo, &revision)?,
                selection: hub::Selection {
                    variant: Variant::parse(&variant)?,
                    layout: decoder.layout(),
                },
                cache_dir: model_store_dir(dir)?,
                endpoint: hub::endpoint_from_env(),
                token: hub::token_from_env(),
                retries,
            };
            hub::cli::pull_command(&opts)
        }
        ModelCommand::List { dir, json } => hub::cli::list_command(&model_store_dir(dir)?, json),
        ModelCommand::Verify {
            dir,
            variant,
            decoder,
            ort_lib,
        } => {
            let only = variant
                .map(|v| -> Result<hub::Selection> {
                    Ok(hub::Selection {
                        variant: Variant::parse(&v)?,
                        layout: decoder.layout(),
                    })
                })
                .transpose()?;
            hub::cli::verify_command(&dir, only.as_ref(), ort_lib.as_deref())
        }
    }
}

fn parse_region(s: &str) -> Result<[f64; 4], String> {
    let v: Vec<f64> = s
        .split(',')
        .map(|p| p.trim().parse::<f64>())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("region {s:?}: {e}; expected x1,y1,x2,y2 in pixels"))?;
    <[f64; 4]>::try_from(v)
        .map_err(|v| format!("region {s:?} has {} numbers; expected x1,y1,x2,y2", v.len()))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log, cli.log_format);
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::Infer {
            task,
            text,
            region,
            model_args,
            images,
        } => {
            let task: Task = task.parse()?;
            let (mut engine, decoding) = model_args.load()?;
            let batch = model_args.batch;
            let request = TaskRequest { task, text, region };
            let stdout = std::io::stdout();
            for chunk in images.chunks(batch) {
                let decoded: Vec<(u32, u32, Vec<u8>)> = chunk
                    .iter()
                    .map(|p| -> Result<_> {
                        let img = image::open(p)
                            .with_context(|| format!("reading image {}", p.display()))?
                            .to_rgb8();
                        Ok((img.width(), img.height(), img.into_raw()))
                    })
                    .collect::<Result<_>>()?;
                let items: Vec<(RgbFrame<'_>, TaskRequest)> = decoded
                    .iter()
                    .map(|(w, h, data)| Ok((RgbFrame::packed(*w, *h, data)?, request.clone())))
                    .collect::<Result<_>>()?;
                let results = engine.run(&items, decoding)?;
                let mut out = stdout.lock();
                for (path, r) in chunk.iter().zip(results) {
                    let mut v = serde_json::to_value(&r)?;
                    if let Some(o) = v.as_object_mut() {
                        o.insert("image".into(), path.display().to_string().into());
                        o.insert(
                            "backend".into(),
                            engine.model.backend.backend.to_string().into(),
                        );
                        o.insert("variant".into(), engine.model.variant.name().into());
                    }
                    writeln!(out, "{}", serde_json::to_string(&v)?)?;
                }
            }
            Ok(())
        }
        Command::Bench {
            task,
            text,
            size,
            warmup,
            iterations,
            model_args,
        } => {
            let task: Task = task.parse()?;
            let (w, h) = size
                .split_once('x')
                .and_then(|(w, h)| Some((w.parse::<u32>().ok()?, h.parse::<u32>().ok()?)))
                .with_context(|| {
                    format!("--size {size:?}: expected WIDTHxHEIGHT, e.g. 1920x1080")
                })?;
            let (mut engine, decoding) = model_args.load()?;
            let mut request = TaskRequest::new(task);
            request.text = text;
            if request.task.input() == florence_edge::florence2::TaskInput::Region
                && request.text.is_none()
            {
                request.region = Some([
                    f64::from(w) / 4.0,
                    f64::from(h) / 4.0,
                    f64::from(w) / 2.0,
                    f64::from(h) / 2.0,
                ]);
            }
            let report = florence_edge::bench::run(
                &mut engine,
                &request,
                decoding,
                (w, h),
                model_args.batch,
                warmup,
                iterations,
            )?;
            let mut v = serde_json::to_value(&report)?;
            if let Some(o) = v.as_object_mut() {
                o.insert(
                    "model".into(),
                    model_args.model.display().to_string().into(),
                );
                o.insert("variant".into(), engine.model.variant.name().into());
                o.insert(
                    "backend".into(),
                    engine.model.backend.backend.to_string().into(),
                );
                o.insert(
                    "decoder".into(),
                    format!("{:?}", engine.model.layout).to_lowercase().into(),
                );
                o.insert("strategy".into(), format!("{:?}", decoding.strategy).into());
            }
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(())
        }
        Command::Run { config, stdout } => run_daemon(&config, stdout),
        Command::Validate {
            config,
            no_files,
            print,
        } => {
            let problems = florence_edge::config::validate(&config, !no_files);
            if problems.is_empty() {
                if print {
                    let effective = load_config(&config)?;
                    let file = &effective.control.overrides_file;
                    match florence_edge::control::overlay::Overlay::load(file) {
                        Ok(o) if !o.is_empty() => println!(
                            "# runtime overrides from {} (revision {}) replace camera(s): {}\n# (DELETE /api/overrides goes back to the file)",
                            file.display(),
                            o.revision,
                            o.cameras.iter().map(|c| c.id.as_str()).collect::<Vec<_>>().join(", ")
                        ),
                        _ => {}
                    }
                    print!("{}", effective.effective_toml());
                } else {
                    println!("{}: ok", config.display());
                }
                Ok(())
            } else {
                for p in &problems {
                    println!("{p}");
                }
                bail!("{} problem(s) in {}", problems.len(), config.display())
            }
        }
        Command::BuildEngines { config } => build_engines_cmd(&config),
        Command::Model { action } => model_cmd(action),
        Command::InstallService {
            root,
            bin_dir,
            dry_run,
        } => {
            use florence_edge::service::install::{install, InstallOptions};
            let binary = std::env::current_exe().context("finding this program's own path")?;
            // A follow-up step that fails (no systemd in a container) is
            // marked in the report; the files are in place, so exit 0.
            print!(
                "{}",
                install(&InstallOptions {
                    root,
                    binary,
                    bin_dir,
                    dry_run,
                })?
            );
            Ok(())
        }
        Command::Parse {
            task,
            width,
            height,
        } => {
            let task: Task = task.parse()?;
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading decoder text from stdin")?;
            let parsed = postprocess::post_process(
                text.trim_end_matches(['\n', '\r']),
                florence_edge::pipeline::parse_kind(task),
                ImageSize { width, height },
            )?;
            let mut result = serde_json::Map::new();
            result.insert(task.token().to_string(), serde_json::to_value(&parsed)?);
            println!("{}", serde_json::Value::Object(result));
            Ok(())
        }
    }
}

fn load_config(path: &std::path::Path) -> Result<florence_edge::config::Config> {
    florence_edge::config::load(path).map_err(invalid_configuration)
}

/// Every problem, one per line, as `validate` prints them.
fn invalid_configuration(errors: Vec<florence_edge::config::ConfigError>) -> anyhow::Error {
    anyhow::anyhow!(
        "invalid configuration:\n{}",
        errors
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    )
}

fn build_engines_cmd(config_path: &std::path::Path) -> Result<()> {
    let config = load_config(config_path)?;
    let spec = config.engine_spec()?;
    let rt = florence_edge::runtime::init(config.model.ort_library.as_deref())?;
    let t0 = std::time::Instant::now();
    let report = florence_edge::runtime::engines::build_engines(&spec, rt, &mut |ev| {
        eprintln!("[{:>4} s] {ev}", t0.elapsed().as_secs());
    })?;
    println!(
        "built {} engines in {:.0} s (fingerprint {}); manifest {}",
        report.manifest.graphs.len(),
        report.total.as_secs_f64(),
        report
            .fingerprint_digest
            .get(..16)
            .unwrap_or(&report.fingerprint_digest),
        report.manifest_path.display()
    );
    Ok(())
}

#[cfg(feature = "gstreamer")]
fn run_daemon(config_path: &std::path::Path, stdout: bool) -> Result<()> {
    use florence_edge::daemon::result::FanOut;
    use florence_edge::daemon::{Daemon, DaemonOptions, MqttSink, ResultSink, StdoutSink};
    // The same checks as `validate`: past this point only what lies outside
    // the file (a camera down, a broker away, a GPU missing) can fail.
    let notifier = std::sync::Arc::new(florence_edge::service::Notifier::from_env());
    let mut config = load_config(config_path)?;
    // `[model] id` with `download = true`: pull a missing model first, with
    // its progress in systemd's STATUS= (and more start-up time asked for).
    let status = notifier.clone();
    if let Some(dir) = hub::ensure_model(&config.model, move |line| {
        status.extend_timeout(std::time::Duration::from_secs(600), line)
    })? {
        config.model.dir = dir;
    }
    let plan = florence_edge::config::plan(config).map_err(invalid_configuration)?;
    let config = plan.config;
    let mqtt = MqttSink::start_validated(plan.publisher)
        .map_err(|e| anyhow::anyhow!("MQTT publisher: {e}"))?;
    let mut sinks: Vec<Box<dyn ResultSink>> = vec![Box::new(mqtt)];
    if stdout {
        sinks.push(Box::new(StdoutSink));
    }
    let sink: Box<dyn ResultSink> = Box::new(FanOut(sinks));
    let options = DaemonOptions {
        config_path: Some(config_path.to_path_buf()),
        notifier,
        // Fault injection for the watchdog tests (tests/service_daemon.rs).
        wedge_inference: std::env::var_os("FLORENCE_EDGE_FAULT_WEDGE_INFERENCE").is_some(),
    };
    let daemon = Daemon::start_with(config, sink, options)?;
    daemon.wait()?;
    Ok(())
}

#[cfg(not(feature = "gstreamer"))]
fn run_daemon(_config_path: &std::path::Path, _stdout: bool) -> Result<()> {
    bail!("this build has no camera ingest (built without the `gstreamer` feature); rebuild with default features to run the daemon")
}
