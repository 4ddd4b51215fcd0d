//! `tikv-mockstore`: serves an in-memory PD and TiKV stores on loopback until
//! killed, so any TiKV client can be pointed at it.
//!
//! Flags are parsed by hand (a handful of options does not justify a parser
//! dependency). A bad flag or a port that cannot be bound prints a clear error
//! and exits non-zero; SIGTERM or SIGINT stops the servers and exits 0.

use std::net::SocketAddr;
use std::process::ExitCode;

use tikv_mockstore::{ApiVersion, MockCluster, TlsConfig};

const USAGE: &str = "\
usage: tikv-mockstore [options]

  --pd-addr HOST:PORT          PD listen address (default 127.0.0.1:2379; port 0 = any)
  --stores N                   number of TiKV stores (default 3)
  --replicas N                 replicas per region (default 3, capped by stores)
  --store-addr HOST:PORT       listen address of the next store (repeat per store;
                               default: an OS-chosen port on the PD host)
  --api-version 1|1ttl|2       storage API version (default 1)
  --keyspace NAME              create a keyspace (repeatable; DEFAULT always exists)
  --keyspace-level-gc NAME     create a keyspace with its own GC state
                               (config gc_management_type=keyspace_level_gc)
  --regions-split-keys N       split a region once it holds more than N keys
  --tls-cert FILE --tls-key FILE
                               serve every endpoint over TLS with this PEM pair
  -h, --help                   print this help
";

#[derive(Debug)]
struct Options {
    pd_addr: SocketAddr,
    stores: usize,
    replicas: usize,
    store_addrs: Vec<SocketAddr>,
    api: ApiVersion,
    keyspaces: Vec<String>,
    keyspace_level_gc: Vec<String>,
    split_keys: Option<usize>,
    tls_cert: Option<String>,
    tls_key: Option<String>,
}

enum Parsed {
    Run(Options),
    Help,
}

fn parse(args: &[String]) -> Result<Parsed, String> {
    let mut o = Options {
        pd_addr: SocketAddr::from(([127, 0, 0, 1], 2379)),
        stores: 3,
        replicas: 3,
        store_addrs: Vec::new(),
        api: ApiVersion::V1,
        keyspaces: Vec::new(),
        keyspace_level_gc: Vec::new(),
        split_keys: None,
        tls_cert: None,
        tls_key: None,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let mut value = |name: &str| -> Result<String, String> {
            match inline.clone() {
                Some(v) => Ok(v),
                None => it
                    .next()
                    .cloned()
                    .ok_or_else(|| format!("{name} needs a value")),
            }
        };
        match flag {
            "-h" | "--help" => return Ok(Parsed::Help),
            "--pd-addr" => {
                let v = value(flag)?;
                o.pd_addr = v
                    .parse()
                    .map_err(|_| format!("--pd-addr: '{v}' is not HOST:PORT"))?;
            }
            "--store-addr" => {
                let v = value(flag)?;
                o.store_addrs.push(
                    v.parse()
                        .map_err(|_| format!("--store-addr: '{v}' is not HOST:PORT"))?,
                );
            }
            "--stores" => o.stores = positive(flag, &value(flag)?)?,
            "--replicas" => o.replicas = positive(flag, &value(flag)?)?,
            "--regions-split-keys" => o.split_keys = Some(positive(flag, &value(flag)?)?),
            "--api-version" => {
                let v = value(flag)?;
                o.api = match v.to_ascii_lowercase().trim_start_matches('v') {
                    "1" => ApiVersion::V1,
                    "1ttl" => ApiVersion::V1Ttl,
                    "2" => ApiVersion::V2,
                    _ => return Err(format!("--api-version: '{v}' is not 1, 1ttl or 2")),
                };
            }
            "--keyspace" => o.keyspaces.push(value(flag)?),
            "--keyspace-level-gc" => o.keyspace_level_gc.push(value(flag)?),
            "--tls-cert" => o.tls_cert = Some(value(flag)?),
            "--tls-key" => o.tls_key = Some(value(flag)?),
            other => return Err(format!("unknown flag '{other}'")),
        }
    }
    if !o.store_addrs.is_empty() && o.store_addrs.len() != o.stores {
        return Err(format!(
            "{} --store-addr given for {} stores",
            o.store_addrs.len(),
            o.stores
        ));
    }
    if o.tls_cert.is_some() != o.tls_key.is_some() {
        return Err("--tls-cert and --tls-key go together".into());
    }
    Ok(Parsed::Run(o))
}

fn positive(flag: &str, v: &str) -> Result<usize, String> {
    match v.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{flag}: '{v}' is not a positive integer")),
    }
}

async fn run(o: Options) -> Result<(), String> {
    let mut b = MockCluster::builder()
        .stores(o.stores)
        .replicas(o.replicas)
        .api_version(o.api)
        .pd_addr(o.pd_addr)
        .store_addrs(o.store_addrs.clone());
    for k in &o.keyspaces {
        b = b.keyspace(k);
    }
    if let Some(n) = o.split_keys {
        b = b.auto_split_keys(n);
    }
    if let (Some(cert), Some(key)) = (&o.tls_cert, &o.tls_key) {
        let cert_chain_pem = std::fs::read(cert).map_err(|e| format!("cannot read {cert}: {e}"))?;
        let key_pem = std::fs::read(key).map_err(|e| format!("cannot read {key}: {e}"))?;
        b = b.tls(TlsConfig {
            cert_chain_pem,
            key_pem,
        });
    }
    let cluster = b.start().await.map_err(|e| e.to_string())?;
    cluster.with_cluster(|c| {
        for name in &o.keyspace_level_gc {
            let id = c.pd_mut().create_keyspace(name);
            c.pd_mut().enable_keyspace_level_gc(id);
        }
    });
    println!("pd listening on {}", cluster.pd_addr());
    for (id, addr) in cluster.store_addrs() {
        println!("store {id} listening on {addr}");
    }
    println!("api version {:?}; ready", o.api);
    use std::io::Write;
    let _ = std::io::stdout().flush();

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("cannot install SIGTERM handler: {e}"))?;
    tokio::select! {
        _ = term.recv() => {}
        r = tokio::signal::ctrl_c() => r.map_err(|e| format!("cannot wait for SIGINT: {e}"))?,
    }
    println!("shutting down");
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), cluster.shutdown()).await;
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match parse(&args) {
        Ok(Parsed::Run(o)) => o,
        Ok(Parsed::Help) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("error: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
