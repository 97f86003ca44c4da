//! The admin HTTP endpoint (loopback by default): `/metrics` for
//! Prometheus, `/healthz` and `/readyz` for Kubernetes probes, `/stats` and
//! `/config` (secrets redacted) for humans.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::state::State;

pub async fn serve(state: Arc<State>, listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(&state, req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn respond(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

fn route(state: &State, req: Request<Incoming>) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
            let memory = &state.client_memory;
            let metrics = &state.metrics;
            metrics.client_memory.set(memory.used() as i64);
            metrics.client_memory_limit.set(memory.limit() as i64);
            respond(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                metrics.render(),
            )
        }
        (&Method::GET, "/healthz") => respond(StatusCode::OK, "text/plain", "ok\n".into()),
        (&Method::GET, "/readyz") => readyz(state),
        (&Method::GET, "/stats") => {
            respond(StatusCode::OK, "application/json", stats(state).to_string())
        }
        (&Method::GET, "/config") => respond(
            StatusCode::OK,
            "application/json",
            config(state).to_string(),
        ),
        (&Method::POST, "/reload") => match state.reload() {
            Ok(generation) => respond(
                StatusCode::OK,
                "application/json",
                json!({ "reloaded": true, "generation": generation }).to_string(),
            ),
            Err(e) => respond(
                StatusCode::BAD_REQUEST,
                "application/json",
                json!({ "reloaded": false, "error": e }).to_string(),
            ),
        },
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

/// Ready while every required pool's master answers and keyway is not
/// draining; the body gives each pool's state either way.
fn readyz(state: &State) -> Response<Full<Bytes>> {
    let live = state.live();
    let mut pools = serde_json::Map::new();
    let mut ready = true;
    for pool in live.backends.pools() {
        if pool.is_replica_pool() {
            // Reads fall back to the master without a replica.
            continue;
        }
        let required = live
            .config
            .pools
            .iter()
            .find(|p| p.name == pool.name())
            .is_none_or(|p| p.required);
        let probe = pool.probe();
        let problem = match probe.ok {
            Some(true) if probe.role == "master" || probe.role.is_empty() => None,
            Some(true) => Some(format!("backend reports role '{}', not master", probe.role)),
            Some(false) => Some(probe.reason),
            None => Some("not probed yet".to_string()),
        };
        ready &= problem.is_none() || !required;
        let endpoint = pool.endpoint();
        let address = match &endpoint.addr {
            None => serde_json::Value::Null,
            Some(addr) => addr.to_string().into(),
        };
        pools.insert(
            pool.name().to_string(),
            json!({
                "up": problem.is_none(),
                "required": required,
                "address": address,
                "reason": problem,
            }),
        );
    }
    let draining = state.drain.is_cancelled();
    let status = match ready && !draining {
        true => StatusCode::OK,
        false => StatusCode::SERVICE_UNAVAILABLE,
    };
    let body = json!({ "ready": ready && !draining, "draining": draining, "pools": pools });
    respond(status, "application/json", body.to_string())
}

/// A sample's labels as (name, value) pairs.
type Labels<'a> = [(&'a str, &'a str)];

/// Sums a counter family's samples whose labels match `filter`.
fn sum_samples(state: &State, family: &str, filter: &dyn Fn(&Labels) -> bool) -> f64 {
    let mut total = 0.0;
    for mf in state.metrics.gather() {
        if mf.name() != family {
            continue;
        }
        for m in mf.get_metric() {
            let labels: Vec<(&str, &str)> = m
                .get_label()
                .iter()
                .map(|l| (l.name(), l.value()))
                .collect();
            if filter(&labels) {
                total += m.get_counter().get_value();
            }
        }
    }
    total
}

fn label<'a>(labels: &Labels<'a>, name: &str) -> Option<&'a str> {
    labels.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
}

fn stats(state: &State) -> Value {
    let uptime = state.started.elapsed().as_secs_f64().max(1.0);
    let mut pools = serde_json::Map::new();
    for pool in state.live().backends.pools() {
        let name = pool.name();
        let is_pool = |l: &Labels| label(l, "pool") == Some(name);
        let commands = sum_samples(state, "keyway_commands_total", &is_pool);
        let errors = sum_samples(state, "keyway_commands_total", &|l| {
            is_pool(l) && label(l, "outcome") != Some("ok")
        });
        let hits = sum_samples(state, "keyway_cache_hits_total", &is_pool);
        let misses = sum_samples(state, "keyway_cache_misses_total", &is_pool);
        let probe = pool.probe();
        let cluster = pool.cluster().map(|c| {
            let map = c.map();
            let nodes: Vec<Value> = map
                .masters
                .iter()
                .zip(&map.replicas)
                .map(|(master, replicas)| {
                    json!({
                        "master": master.endpoint().address(),
                        "replicas": replicas.iter().map(|r| r.endpoint().address()).collect::<Vec<_>>(),
                        "connections": master.multiplexed(),
                    })
                })
                .collect();
            json!({ "slots_covered": map.covered(), "shards": nodes })
        });
        pools.insert(
            name.to_string(),
            json!({
                "cluster": cluster,
                "address": pool.endpoint().address(),
                "up": probe.ok == Some(true),
                "role": probe.role,
                "commands": commands,
                "ops_per_sec_avg": commands / uptime,
                "errors": errors,
                "hit_ratio": if hits + misses > 0.0 { Some(hits / (hits + misses)) } else { None },
                "latency_seconds": latency(state, name),
                "connections": { "multiplexed": pool.multiplexed(), "leased": pool.leased() },
            }),
        );
    }
    let mut limits = serde_json::Map::new();
    for limit in state.live().policy.limits() {
        let denials = sum_samples(state, "keyway_denials_total", &|l| {
            label(l, "reason") == Some("ratelimit") && label(l, "detail") == Some(&limit.name)
        });
        limits.insert(
            limit.name.clone(),
            json!({ "denials": denials, "tracked_keys": limit.tracked_keys() }),
        );
    }
    json!({
        "uptime_seconds": state.started.elapsed().as_secs(),
        "clients": state.clients.len(),
        "pools": pools,
        "limits": limits,
    })
}

/// p50 and p99 of a pool's command durations, from the histogram buckets.
fn latency(state: &State, pool: &str) -> Value {
    let mut buckets: Vec<(f64, u64)> = Vec::new();
    let mut count = 0u64;
    for mf in state.metrics.gather() {
        if mf.name() != "keyway_command_duration_seconds" {
            continue;
        }
        for m in mf.get_metric() {
            if !m
                .get_label()
                .iter()
                .any(|l| l.name() == "pool" && l.value() == pool)
            {
                continue;
            }
            let h = m.get_histogram();
            count += h.get_sample_count();
            for (i, b) in h.get_bucket().iter().enumerate() {
                if buckets.len() <= i {
                    buckets.push((b.upper_bound(), 0));
                }
                buckets[i].1 += b.cumulative_count();
            }
        }
    }
    let quantile = |q: f64| -> Option<f64> {
        if count == 0 {
            return None;
        }
        let target = (q * count as f64).ceil() as u64;
        buckets
            .iter()
            .find(|(_, c)| *c >= target)
            .map(|(ub, _)| *ub)
    };
    json!({ "p50_le": quantile(0.5), "p99_le": quantile(0.99), "count": count })
}

fn config(state: &State) -> Value {
    let c = &state.live().config;
    json!({
        "source": c.source,
        "listen": c.listen.to_string(),
        "admin": c.admin.to_string(),
        "server": {
            "databases": c.server.databases,
            "max_clients": c.server.max_clients,
            "max_bulk_bytes": c.server.max_bulk_bytes,
            "max_pipeline": c.server.max_pipeline,
            "max_client_memory": state.client_memory.limit(),
        },
        "pools": c.pools.iter().map(|p| json!({
            "name": p.name,
            // Display of an endpoint never includes the password.
            "url": p.endpoint.to_string(),
            "from": p.origin,
        })).collect::<Vec<_>>(),
        "routes": {
            "default": c.routes.default,
            "prefixes": c.routes.prefixes.iter().map(|r| json!({"prefix": r.prefix, "pool": r.pool})).collect::<Vec<_>>(),
            "commands": c.routes.commands.iter().map(|r| json!({"command": r.command, "pool": r.pool})).collect::<Vec<_>>(),
            "databases": c.routes.databases.iter().map(|r| json!({"db": r.db, "pool": r.pool})).collect::<Vec<_>>(),
        },
        "auth": {
            "required": state.live().policy.auth_required,
            "users": c.auth.users.iter().map(|u| json!({
                "name": u.name,
                "password": "<redacted>",
                "prefixes": u.prefixes,
                "read_only": u.read_only,
                "categories": u.categories,
                "allow": u.allow,
                "block": u.block,
                "enabled": u.enabled,
            })).collect::<Vec<_>>(),
        },
        "blocklist": c.policy.blocklist,
        "limits": c.limits.iter().map(|l| json!({
            "name": l.name, "scope": format!("{:?}", l.scope).to_lowercase(), "rate": l.rate, "burst": l.burst,
            "commands": l.commands, "pool": l.pool, "action": format!("{:?}", l.action).to_lowercase(),
            "max_delay_ms": l.max_delay_ms,
        })).collect::<Vec<_>>(),
    })
}
