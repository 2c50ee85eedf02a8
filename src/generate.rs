//! `mochi generate`: submit a prompt, follow its progress, download the MP4.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use indicatif::{ProgressBar, ProgressStyle};
use protocol::api::{BackendsView, JobView};
use protocol::spec::{JobSpec, Priority, Resolution};
use protocol::{ErrorBody, JobState};

/// Arguments of `mochi generate`.
#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// What the video should show.
    pub prompt: String,
    /// Where to write the MP4 (default: `<job id>.mp4` in the current directory).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// The gateway's URL.
    #[arg(long, env = "MOCHI_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// What the video should not show.
    #[arg(long, default_value = "")]
    pub negative_prompt: String,
    /// Length in frames (rounded up to 6k+1).
    #[arg(long, conflicts_with = "duration")]
    pub frames: Option<u32>,
    /// Length in seconds.
    #[arg(long)]
    pub duration: Option<f32>,
    /// Frames per second.
    #[arg(long)]
    pub fps: Option<u32>,
    /// Resolution preset: 480p, 480p-portrait, 720p, 720p-portrait.
    #[arg(long, value_parser = parse_resolution, conflicts_with_all = ["width", "height"])]
    pub resolution: Option<Resolution>,
    /// Width in pixels (a multiple of 16).
    #[arg(long, requires = "height")]
    pub width: Option<u32>,
    /// Height in pixels (a multiple of 16).
    #[arg(long, requires = "width")]
    pub height: Option<u32>,
    /// Denoising steps.
    #[arg(long)]
    pub steps: Option<u32>,
    /// Classifier-free guidance scale.
    #[arg(long)]
    pub guidance_scale: Option<f32>,
    /// Random seed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 3600)]
    pub timeout_s: u64,
    /// The API key (default: `MOCHI_API_KEY`, else the file `<data-dir>/api-key` that
    /// `mochi up` writes).
    #[arg(long, env = "MOCHI_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Where `mochi up` keeps its data (and the `api-key` file).
    #[arg(long, env = "MOCHI_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
}

fn parse_resolution(text: &str) -> Result<Resolution, String> {
    serde_json::from_value(serde_json::Value::String(text.to_owned())).map_err(|_| {
        format!("unknown resolution {text:?}: use 480p, 480p-portrait, 720p or 720p-portrait")
    })
}

impl GenerateArgs {
    fn spec(&self) -> JobSpec {
        JobSpec {
            prompt: self.prompt.clone(),
            negative_prompt: self.negative_prompt.clone(),
            duration_s: self.duration,
            num_frames: self.frames,
            fps: self.fps,
            resolution: self.resolution,
            width: self.width,
            height: self.height,
            steps: self.steps,
            guidance_scale: self.guidance_scale,
            seed: self.seed,
            priority: Priority::Normal,
        }
    }
}

/// Runs `mochi generate`; returns the path of the saved MP4.
pub async fn run(args: GenerateArgs) -> Result<PathBuf> {
    let base = args.server.trim_end_matches('/').to_owned();
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(key) = api_key(&args)? {
        let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {key}"))
            .context("the API key has characters a header cannot carry")?;
        value.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .default_headers(headers)
        .build()?;
    let idempotency_key = protocol::JobId::new().to_string();
    let job = submit(&http, &base, &args.spec(), &idempotency_key).await?;
    eprintln!(
        "job {} accepted: {} frames at {}x{}, {} fps",
        job.id, job.num_frames, job.width, job.height, job.fps
    );
    // Nodes that have just started may not have announced themselves yet: ask again once
    // the job is over if nothing was known now.
    let mut noted = false;
    if let Some(note) = backend_note(&http, &base).await {
        eprintln!("note: {note}");
        noted = true;
    }

    let bar = ProgressBar::new(u64::from(job.steps));
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {msg:>10} [{bar:30}] {pos}/{len} steps ({elapsed})",
        )
        .context("progress template")?
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let deadline = Instant::now() + Duration::from_secs(args.timeout_s);
    let status_url = format!("{base}/v1/videos/{}", job.id);
    let finished = loop {
        let view: JobView = get_json(&http, &status_url).await?;
        bar.set_message(view.state.to_string());
        if let Some(progress) = view.denoising {
            bar.set_position(u64::from(progress.step));
        }
        if view.state.is_terminal() {
            break view;
        }
        if Instant::now() > deadline {
            bar.abandon();
            bail!(
                "job {} still {} after {} s; it keeps running: poll {status_url}",
                job.id,
                view.state,
                args.timeout_s
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    if finished.state != JobState::Succeeded {
        bar.abandon_with_message(finished.state.to_string());
        let reason = finished
            .error
            .map(|e| format!("{}: {}", e.code, e.message))
            .unwrap_or_default();
        bail!("job {} ended {}. {reason}", job.id, finished.state);
    }
    bar.finish_with_message("done");
    if !noted && let Some(note) = backend_note(&http, &base).await {
        eprintln!("note: {note}");
    }

    let output = args
        .output
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}.mp4", job.id)));
    let response = http.get(format!("{status_url}/content")).send().await?;
    let response = check(response).await?;
    let bytes = response.bytes().await.context("download interrupted")?;
    tokio::fs::write(&output, &bytes)
        .await
        .with_context(|| format!("cannot write {}", output.display()))?;
    Ok(output)
}

/// The key from the flag or environment, else from `<data-dir>/api-key`; `None` when
/// neither exists (a server with authentication off needs none).
fn api_key(args: &GenerateArgs) -> Result<Option<String>> {
    if let Some(key) = &args.api_key {
        return Ok(Some(key.trim().to_owned()));
    }
    let path = args.data_dir.join("api-key");
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(text.trim().to_owned())),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// A note when the server's nodes do not run a real model (best effort: no note if the
/// server cannot say).
async fn backend_note(http: &reqwest::Client, base: &str) -> Option<String> {
    let response = http.get(format!("{base}/v1/backends")).send().await.ok()?;
    let view: BackendsView = check(response).await.ok()?.json().await.ok()?;
    let tiny = format!("mochi:{}", gpu_node::model_dir::tiny::TINY_MODEL_NAME);
    let notes: Vec<&str> = view
        .backends
        .iter()
        .map(|b| b.backend.as_str())
        .filter_map(|backend| {
            if backend == tiny {
                Some("the server runs the embedded tiny Mochi model with random weights: the video will be noise (start it with `--model-dir DIR` for the official release)")
            } else if backend == "simulated" {
                Some("the server runs the simulated backend: the video will be a test pattern")
            } else {
                None
            }
        })
        .collect();
    (!notes.is_empty() && notes.len() == view.backends.len()).then(|| notes.join("; "))
}

async fn submit(
    http: &reqwest::Client,
    base: &str,
    spec: &JobSpec,
    idempotency_key: &str,
) -> Result<JobView> {
    let url = format!("{base}/v1/videos");
    let mut last_error = None;
    // The idempotency key makes retrying a lost response safe: the server answers the same job.
    for attempt in 0..5u32 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
        }
        match http
            .post(&url)
            .header("Idempotency-Key", idempotency_key)
            .json(spec)
            .send()
            .await
        {
            Ok(response) => return Ok(check(response).await?.json().await?),
            Err(error) if error.is_connect() || error.is_timeout() => last_error = Some(error),
            Err(error) => return Err(error.into()),
        }
    }
    Err(anyhow!(
        "cannot reach {base}: is `mochi up` running? ({})",
        last_error.map(|e| e.to_string()).unwrap_or_default()
    ))
}

async fn get_json(http: &reqwest::Client, url: &str) -> Result<JobView> {
    let response = http
        .get(url)
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    Ok(check(response).await?.json().await?)
}

/// Turns an API error response into an error that quotes the server's sentence.
async fn check(response: reqwest::Response) -> Result<reqwest::Response> {
    if response.status().is_success() {
        return Ok(response);
    }
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    match serde_json::from_str::<ErrorBody>(&text) {
        Ok(body) => {
            let field = body
                .error
                .field
                .map(|f| format!(" (field `{f}`)"))
                .unwrap_or_default();
            bail!(
                "{status} {}: {}{field}",
                body.error.code,
                body.error.message
            )
        }
        Err(_) => bail!("{status}: {text}"),
    }
}
