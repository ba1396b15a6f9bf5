//! The clients: tasks asking random replicas on every public route, for
//! labels of pools whose MPC answers are known by prefix; every answer is
//! logged, read into what it means for each label it names.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use crate::log::{Answer, Reply, Route, now, origin_wall};
use crate::replicas::User;

/// How many client tasks ask at once.
pub const CLIENTS: usize = 12;

/// How many of them are the tight user.
const TIGHT_CLIENTS: usize = 2;

/// The labels the tight user asks for, and only it retrieves; the MPC
/// accepts them, so its calls for them are the user's upstream charges.
pub const TIGHT_PREFIX: &str = "QT";

/// The pools: prefix, how many labels, and how often (in percent) a label
/// is drawn from it. The prefix tells the stand-in MPC's answer.
const POOLS: [(&str, u32, u32); 5] = [
    ("OK", 120, 63),
    ("NF", 30, 18),
    ("ER", 10, 3),
    ("TO", 10, 8),
    ("CL", 10, 8),
];

/// The tight user's pool.
const TIGHT_POOL: u32 = 200;

/// The `n`th label of a pool (8 characters: a `trksub_or_trkid`).
pub fn label(prefix: &str, n: u32) -> String {
    format!("{prefix}{n:06}")
}

/// A label to ask for often, and until when.
pub type Focus = Arc<Mutex<Option<(String, f64)>>>;

/// How often (in percent) a client asks for the focused label.
const FOCUS_SHARE: u32 = 10;

/// The clients, running until stopped.
pub struct Traffic {
    answers: Arc<Mutex<Vec<Answer>>>,
    requests: Arc<[AtomicU64; 5]>,
    stop: Arc<AtomicBool>,
    /// While set, the clients send nothing new.
    pub hush: Arc<AtomicBool>,
    /// A label the clients ask for often until a time, to see what a fault
    /// aimed at its call left behind.
    pub focus: Focus,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Traffic {
    /// Starts [`CLIENTS`] tasks against the replicas at `addresses`.
    pub fn start(seed: u64, users: &[User], addresses: Arc<RwLock<Vec<Option<String>>>>) -> Self {
        let answers = Arc::new(Mutex::new(Vec::new()));
        let requests = Arc::new(std::array::from_fn(|_| AtomicU64::new(0)));
        let stop = Arc::new(AtomicBool::new(false));
        let hush = Arc::new(AtomicBool::new(false));
        let focus = Focus::default();
        let tight = users.iter().find(|user| user.tight).unwrap().clone();
        let roomy: Vec<User> = users
            .iter()
            .filter(|user| !user.tight && user.name != "probe")
            .cloned()
            .collect();
        let tasks = (0..CLIENTS)
            .map(|index| {
                let user = if index < TIGHT_CLIENTS {
                    tight.clone()
                } else {
                    roomy[index % roomy.len()].clone()
                };
                let client = Client {
                    user,
                    rng: StdRng::seed_from_u64(seed.wrapping_add(index as u64 + 1)),
                    http: http_client(),
                    addresses: Arc::clone(&addresses),
                    answers: Arc::clone(&answers),
                    requests: Arc::clone(&requests),
                    hush: Arc::clone(&hush),
                    focus: Arc::clone(&focus),
                };
                tokio::spawn(client.run(Arc::clone(&stop)))
            })
            .collect();
        Self {
            answers,
            requests,
            stop,
            hush,
            focus,
            tasks,
        }
    }

    /// Asks the clients to stop after the request each has under way.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Waits for every client to stop; returns the answers and the number
    /// of requests per route (in the order of [`Route::ALL`]).
    pub async fn finish(self) -> (Vec<Answer>, [u64; 5]) {
        self.stop();
        for task in self.tasks {
            task.await.unwrap();
        }
        let answers = std::mem::take(&mut *self.answers.lock().unwrap());
        let requests = std::array::from_fn(|index| self.requests[index].load(Ordering::SeqCst));
        (answers, requests)
    }
}

fn http_client() -> reqwest::Client {
    // Longer than any stop of a replica or of Redis: every request ends
    // with an answer or a transport error of its own.
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

struct Client {
    user: User,
    rng: StdRng,
    http: reqwest::Client,
    addresses: Arc<RwLock<Vec<Option<String>>>>,
    answers: Arc<Mutex<Vec<Answer>>>,
    requests: Arc<[AtomicU64; 5]>,
    hush: Arc<AtomicBool>,
    focus: Focus,
}

impl Client {
    async fn run(mut self, stop: Arc<AtomicBool>) {
        while !stop.load(Ordering::SeqCst) {
            let pause = self.rng.random_range(10..50);
            tokio::time::sleep(Duration::from_millis(pause)).await;
            if self.hush.load(Ordering::SeqCst) {
                continue;
            }
            let live: Vec<(usize, String)> = self
                .addresses
                .read()
                .unwrap()
                .iter()
                .enumerate()
                .filter_map(|(replica, address)| Some((replica, address.clone()?)))
                .collect();
            if live.is_empty() {
                continue;
            }
            let (replica, base) = live[self.rng.random_range(..live.len())].clone();
            let route = self.route();
            let count = match route {
                Route::Retrieve | Route::LabelStatus => 1,
                Route::Page => self.rng.random_range(1..=3),
                Route::BatchStatus | Route::BatchRetrieve => self.rng.random_range(2..=4),
            };
            let labels: Vec<String> = (0..count).map(|_| self.label(route)).collect();
            self.requests[route as usize].fetch_add(1, Ordering::Relaxed);
            let answers = ask(&self.http, &base, &self.user, route, &labels).await;
            let mut log = self.answers.lock().unwrap();
            for (label, (sent, received, reply)) in labels.into_iter().zip(answers) {
                log.push(Answer {
                    route,
                    replica,
                    tight: self.user.tight,
                    label,
                    sent,
                    received,
                    reply,
                });
            }
        }
    }

    fn route(&mut self) -> Route {
        let roll = self.rng.random_range(0..100);
        if self.user.tight {
            return match roll {
                0..50 => Route::Retrieve,
                50..90 => Route::BatchRetrieve,
                _ => Route::Page,
            };
        }
        match roll {
            0..35 => Route::Retrieve,
            35..55 => Route::LabelStatus,
            55..70 => Route::BatchStatus,
            70..90 => Route::BatchRetrieve,
            _ => Route::Page,
        }
    }

    /// A label for `route`: the tight user's own pool for it; the others'
    /// pools for them, and a look at the tight user's labels now and then.
    fn label(&mut self, route: Route) -> String {
        if self.user.tight || (route.is_status() && self.rng.random_range(0..10) == 0) {
            return label(TIGHT_PREFIX, self.rng.random_range(0..TIGHT_POOL));
        }
        let focused = self.focus.lock().unwrap().clone();
        // Only the tight user retrieves its own labels.
        if let Some((focused, until)) = focused
            && now() < until
            && (route.is_status() || !focused.starts_with(TIGHT_PREFIX))
            && self.rng.random_range(0..100) < FOCUS_SHARE
        {
            return focused;
        }
        let mut roll = self.rng.random_range(0..100);
        for (prefix, size, weight) in POOLS {
            if roll < weight {
                return label(prefix, self.rng.random_range(0..size));
            }
            roll -= weight;
        }
        unreachable!("the pools' weights add up to 100")
    }
}

/// Sends one request of `route` for `labels` to the replica at `base`;
/// what each label got, with when the request was sent and answered.
pub async fn ask(
    http: &reqwest::Client,
    base: &str,
    user: &User,
    route: Route,
    labels: &[String],
) -> Vec<(f64, f64, Reply)> {
    let request = match route {
        Route::Retrieve => http
            .post(format!("{base}/api/action-codes/retrieve"))
            .json(&json!({ "label": labels[0] })),
        Route::LabelStatus => http.get(format!("{base}/api/action-codes/labels/{}", labels[0])),
        Route::BatchStatus => http
            .post(format!("{base}/api/action-codes/batch/status"))
            .json(&json!({ "labels": labels })),
        Route::BatchRetrieve => http
            .post(format!("{base}/api/action-codes/batch/retrieve"))
            .json(&json!({ "labels": labels })),
        Route::Page => http
            .post(format!("{base}/"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(serde_urlencoded::to_string([("labels", labels.join("\n"))]).unwrap()),
    };
    let sent = now();
    let read = async {
        let response = request.header("x-api-key", &user.key).send().await.ok()?;
        let status = response.status().as_u16();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned)
        };
        let (retry_after, content_type) = (header("retry-after"), header("content-type"));
        let body = response.bytes().await.ok()?;
        Some((status, retry_after, content_type.unwrap_or_default(), body))
    };
    let Some((status, retry_after, content_type, body)) = read.await else {
        let received = now();
        return labels
            .iter()
            .map(|_| (sent, received, Reply::Transport))
            .collect();
    };
    let received = now();
    let origin = origin_wall();
    let replies = match route {
        Route::Page => page_replies(status, &content_type, &body, labels, origin),
        _ => match serde_json::from_slice::<Value>(&body) {
            Err(_) => vec![
                Reply::Unexpected(format!(
                    "{status} {content_type}: {}",
                    String::from_utf8_lossy(&body)
                ));
                labels.len()
            ],
            Ok(body) if matches!(route, Route::BatchStatus | Route::BatchRetrieve) => {
                batch_replies(route, status, retry_after.as_deref(), &body, labels, origin)
            }
            Ok(body) => vec![Reply::of_item(
                route,
                &labels[0],
                status,
                retry_after.as_deref(),
                true,
                &body,
                origin,
            )],
        },
    };
    replies
        .into_iter()
        .map(|reply| (sent, received, reply))
        .collect()
}

/// Each label's item of a batch answer.
fn batch_replies(
    route: Route,
    status: u16,
    retry_after: Option<&str>,
    body: &Value,
    labels: &[String],
    origin: SystemTime,
) -> Vec<Reply> {
    let items = body["items"].as_array().filter(|_| status == 200);
    match items {
        Some(items) if items.len() == labels.len() => items
            .iter()
            .zip(labels)
            .map(|(item, label)| match item["status"].as_u64() {
                Some(status) if item["label"] == label.as_str() => Reply::of_item(
                    route,
                    label,
                    status as u16,
                    None,
                    false,
                    &item["body"],
                    origin,
                ),
                _ => Reply::Unexpected(format!("batch item {item}")),
            })
            .collect(),
        // A whole batch refused answers for each of its labels.
        _ => labels
            .iter()
            .map(|label| Reply::of_item(route, label, status, retry_after, true, body, origin))
            .collect(),
    }
}

/// Each label's row of the page's answer to its form.
fn page_replies(
    status: u16,
    content_type: &str,
    body: &[u8],
    labels: &[String],
    origin: SystemTime,
) -> Vec<Reply> {
    let html = String::from_utf8_lossy(body);
    let rows = page_rows(&html);
    if status != 200 || !content_type.starts_with("text/html") || rows.len() != labels.len() {
        let what = format!("page {status} {content_type}, {} rows", rows.len());
        return vec![Reply::Unexpected(what); labels.len()];
    }
    rows.iter()
        .zip(labels)
        .map(|((class, label, words), asked)| {
            if label == asked {
                Reply::of_page_row(class, words, origin)
            } else {
                Reply::Unexpected(format!("page row for {label}, asked {asked}"))
            }
        })
        .collect()
}

/// The result rows of the page: class, label and words.
fn page_rows(html: &str) -> Vec<(String, String, String)> {
    let mut rows = Vec::new();
    let mut rest = html;
    while let Some(start) = rest.find("<tr class=\"") {
        rest = &rest[start + "<tr class=\"".len()..];
        let field = |text: &str, from: &str, to: &str| -> Option<String> {
            let start = text.find(from)? + from.len();
            let end = start + text[start..].find(to)?;
            Some(text[start..end].to_owned())
        };
        let row = rest.find("</tr>").map_or(rest, |end| &rest[..end]);
        if let (Some(class), Some(label), Some(words)) = (
            row.find('"').map(|end| row[..end].to_owned()),
            field(row, "<code>", "</code>"),
            field(row, "</code></td><td>", "</td>"),
        ) {
            rows.push((class, label, words));
        }
    }
    rows
}

/// Asks `replica` to retrieve a `label` never asked before until it is
/// `sent`, for at most `within` seconds from `from`.
pub async fn probe(
    addresses: &RwLock<Vec<Option<String>>>,
    replica: usize,
    user: &User,
    label: String,
    from: f64,
    within: f64,
) -> crate::log::Probe {
    let http = http_client();
    let mut last = String::from("not asked");
    let labels = [label.clone()];
    while now() < from + within {
        let address = addresses.read().unwrap()[replica].clone();
        if let Some(base) = address {
            let (_, received, reply) = ask(&http, &base, user, Route::Retrieve, &labels)
                .await
                .remove(0);
            if matches!(reply, Reply::Sent { .. }) {
                return crate::log::Probe {
                    replica,
                    label,
                    from,
                    sent_at: Some(received),
                    last,
                };
            }
            last = format!("{:.2}: {}", received, reply.describe());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    crate::log::Probe {
        replica,
        label,
        from,
        sent_at: None,
        last,
    }
}
