import { Counter, Gauge, Histogram, Registry } from "prom-client";
import type { FactSource, Facts, KindFacts } from "./sources.ts";
import { cached } from "./snapshot.ts";

export type LoginOutcome = "success" | "invalid" | "throttled" | "other";

/** What the hash queue gauges read; PasswordHasher.load has this shape. */
export type HashLoad = () => { running: number; waiting: number };

const seconds = (ms: number) => ms / 1000;

/** How long a scrape waits for one source of backup facts before it counts as down. */
const SOURCE_TIMEOUT_MS = 4000;

function withinMs<T>(p: Promise<T>, ms: number): Promise<T> {
  let timer: Timer | undefined;
  const late = new Promise<never>(
    (_, reject) => (timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms)),
  );
  p.catch(() => {}); // answered after the deadline: nobody waits for it any more
  return Promise.race([p, late]).finally(() => clearTimeout(timer));
}

/**
 * The process's metrics in one registry of its own (not prom-client's global one, so a test or a
 * second app in one process never sees another's counts). Backup figures are read from the
 * sources when scraped, never kept: a scrape shows the folder as it is now.
 */
export class Metrics {
  readonly registry = new Registry();
  private readonly sources: FactSource[] = [];
  private readonly http: Counter<"method" | "route" | "status">;
  private readonly latency: Histogram<"method" | "route" | "status">;
  private readonly logins: Counter<"outcome">;
  /** One read of every source per scrape, however many gauges ask. */
  private readonly facts = cached(() => this.readSources(), 1000);
  private failedSources: string[] = [];

  constructor(options: { sources?: FactSource[]; hashLoad?: HashLoad } = {}) {
    const registers = [this.registry];
    this.sources.push(...(options.sources ?? []));
    this.http = new Counter({
      name: "shinkei_http_requests_total",
      help: "HTTP requests answered, by route pattern and status",
      labelNames: ["method", "route", "status"],
      registers,
    });
    this.latency = new Histogram({
      name: "shinkei_http_request_duration_seconds",
      help: "Time to answer an HTTP request, by route pattern and status",
      labelNames: ["method", "route", "status"],
      // Logins hash with argon2 (tens to hundreds of ms); the rest answer in a few ms.
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers,
    });
    this.logins = new Counter({
      name: "shinkei_login_attempts_total",
      help: "Login attempts by outcome (no account or address is ever a label)",
      labelNames: ["outcome"],
      registers,
    });
    for (const outcome of ["success", "invalid", "throttled"]) this.logins.inc({ outcome }, 0);

    const hashLoad = options.hashLoad;
    if (hashLoad) {
      new Gauge({
        name: "shinkei_password_hash_queue_depth",
        help: "Password hashes waiting for a free hashing slot",
        registers,
        collect() {
          this.set(hashLoad().waiting);
        },
      });
      new Gauge({
        name: "shinkei_password_hash_running",
        help: "Password hashes running now",
        registers,
        collect() {
          this.set(hashLoad().running);
        },
      });
    }
    this.backupGauges(registers);
  }

  addSource(source: FactSource) {
    this.sources.push(source);
  }

  observeHttp(method: string, route: string, status: number, durationSeconds: number) {
    const labels = { method, route, status: String(status) };
    this.http.inc(labels);
    this.latency.observe(labels, durationSeconds);
  }

  login(outcome: LoginOutcome) {
    this.logins.inc({ outcome });
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  text(): Promise<string> {
    return this.registry.metrics();
  }

  private async readSources(): Promise<
    Required<Omit<Facts, "window" | "receiver">> & Pick<Facts, "window" | "receiver">
  > {
    const failed: string[] = [];
    const all: Required<Omit<Facts, "window" | "receiver">> & Pick<Facts, "window" | "receiver"> = {
      kinds: [],
      offsitePending: [],
      offsiteLag: [],
    };
    // All at once, each bounded: a slow source (the database) never holds the others' figures back.
    const read = await Promise.all(
      this.sources.map((s) =>
        withinMs(s.read(), SOURCE_TIMEOUT_MS).then(
          (f) => ({ f }),
          () => null,
        ),
      ),
    );
    read.forEach((r, i) => {
      // A source that cannot be read shows as shinkei_backup_source_up 0, and the scrape still answers.
      if (!r) {
        failed.push(this.sources[i]!.name);
        return;
      }
      all.kinds.push(...r.f.kinds);
      all.offsitePending.push(...(r.f.offsitePending ?? []));
      all.offsiteLag.push(...(r.f.offsiteLag ?? []));
      all.window ??= r.f.window;
      all.receiver ??= r.f.receiver;
    });
    this.failedSources = failed;
    return all;
  }

  private backupGauges(registers: Registry[]) {
    const self = this;
    /** A gauge per kind whose value comes from the facts; a kind without that fact has no sample. */
    const perKind = (name: string, help: string, value: (k: KindFacts, now: number) => number | null | undefined) =>
      new Gauge({
        name,
        help,
        labelNames: ["kind"],
        registers,
        async collect() {
          this.reset();
          const now = Date.now();
          for (const k of (await self.facts()).kinds) {
            const v = value(k, now);
            if (v !== null && v !== undefined) this.set({ kind: k.kind }, v);
          }
        },
      });
    perKind("shinkei_backups", "Good backups kept locally", (k) => k.count);
    perKind(
      "shinkei_backup_newest_age_seconds",
      "Age of the newest good backup",
      (k, now) => k.newest && seconds(now - k.newest.takenAt.getTime()),
    );
    perKind(
      "shinkei_backup_newest_timestamp_seconds",
      "When the newest good backup was taken (Unix time)",
      (k) => k.newest && seconds(k.newest.takenAt.getTime()),
    );
    perKind("shinkei_backup_newest_size_bytes", "Size of the newest good backup's file", (k) => k.newest?.sizeBytes);
    perKind("shinkei_backup_newest_duration_seconds", "How long the newest good backup took", (k) =>
      k.newest?.durationMs == null ? null : seconds(k.newest.durationMs),
    );
    perKind(
      "shinkei_backup_max_age_seconds",
      "The configured limit for the newest good backup's age (BACKUP_MAX_AGE)",
      (k) => seconds(k.maxAgeMs),
    );
    perKind(
      "shinkei_drill_last_passed",
      "Whether the most recent restore drill passed (1) or failed (0)",
      (k) => k.lastDrill && (k.lastDrill.passed ? 1 : 0),
    );
    perKind(
      "shinkei_drill_last_age_seconds",
      "Age of the most recent restore drill, passed or failed",
      (k, now) => k.lastDrill && seconds(now - k.lastDrill.at.getTime()),
    );
    perKind(
      "shinkei_drill_last_timestamp_seconds",
      "When the most recent restore drill ran (Unix time)",
      (k) => k.lastDrill && seconds(k.lastDrill.at.getTime()),
    );
    perKind(
      "shinkei_drill_last_duration_seconds",
      "How long the most recent restore drill took",
      (k) => k.lastDrill && seconds(k.lastDrill.durationMs),
    );
    perKind(
      "shinkei_drill_last_success_age_seconds",
      "Age of the most recent passed restore drill: the last verified restore",
      (k, now) => k.lastPassedDrillAt && seconds(now - k.lastPassedDrillAt.getTime()),
    );
    perKind(
      "shinkei_drill_max_age_seconds",
      "The configured limit for the last passed drill's age (BACKUP_DRILL_MAX_AGE)",
      (k) => seconds(k.drillMaxAgeMs),
    );
    new Gauge({
      name: "shinkei_offsite_pending_backups",
      help: "Local backups not yet copied to the off-site store (only when one is configured)",
      labelNames: ["store"],
      registers,
      async collect() {
        this.reset();
        for (const p of (await self.facts()).offsitePending) this.set({ store: p.store }, p.count);
      },
    });
    new Gauge({
      name: "shinkei_offsite_lag_seconds",
      help:
        "How far the off-site copy trails the local archive: for wal, the received time it lacks; for base, " +
        "how long the oldest base backup not copied has waited; 0 when nothing waits",
      labelNames: ["kind"],
      registers,
      async collect() {
        this.reset();
        for (const l of (await self.facts()).offsiteLag) this.set({ kind: l.kind }, l.lagSeconds);
      },
    });
    new Gauge({
      name: "shinkei_offsite_max_lag_seconds",
      help: "The configured limit for the off-site lag (PITR_OFFSITE_MAX_LAG)",
      labelNames: ["kind"],
      registers,
      async collect() {
        this.reset();
        for (const l of (await self.facts()).offsiteLag) this.set({ kind: l.kind }, seconds(l.maxLagMs));
      },
    });
    /** The point-in-time window (only where a source reports one: the WAL archive). */
    const windowGauge = (
      name: string,
      help: string,
      value: (w: NonNullable<Facts["window"]>, now: number) => number | null,
    ) =>
      new Gauge({
        name,
        help,
        registers,
        async collect() {
          this.reset();
          const w = (await self.facts()).window;
          const v = w ? value(w, Date.now()) : null;
          if (v !== null) this.set(v);
        },
      });
    windowGauge(
      "shinkei_pitr_window_start_timestamp_seconds",
      "Earliest moment the WAL archive can restore to (Unix time)",
      (w) => w.start && seconds(w.start.getTime()),
    );
    windowGauge(
      "shinkei_pitr_window_end_timestamp_seconds",
      "Latest moment the WAL archive can restore to (Unix time)",
      (w) => w.end && seconds(w.end.getTime()),
    );
    windowGauge(
      "shinkei_pitr_window_end_age_seconds",
      "How far the archive's latest restorable moment trails now: the local RPO while writes go on",
      (w, now) => w.end && seconds(now - w.end.getTime()),
    );
    windowGauge(
      "shinkei_pitr_max_lag_seconds",
      "The configured limit for how far the archive may trail (PITR_MAX_LAG)",
      (w) => seconds(w.maxLagMs),
    );
    windowGauge("shinkei_wal_gaps", "Gaps in the archived WAL sequence", (w) => w.gaps);
    windowGauge(
      "shinkei_wal_gaps_after_newest_base_backup",
      "Gaps after the newest base backup: they cut the window short",
      (w) => w.gapsAfterNewestBase,
    );
    windowGauge(
      "shinkei_pitr_untrusted_files",
      "Base backups and WAL files left out of the window: unsigned, mis-signed, or plain where this host encrypts",
      (w) => w.untrusted,
    );
    windowGauge(
      "shinkei_wal_unsealed_segments",
      "Finished WAL segments waiting for the archiver to seal them (encrypt, checksum, copy off-site)",
      (w) => w.unsealed,
    );
    windowGauge(
      "shinkei_wal_unsealed_oldest_age_seconds",
      "How long the oldest finished segment has waited to be sealed; 0 when none waits",
      (w, now) => (w.unsealedSince ? seconds(now - w.unsealedSince.getTime()) : 0),
    );
    windowGauge(
      "shinkei_wal_spool_free_bytes",
      "Free space on the disk the WAL receiver writes to",
      (w) => w.spoolFreeBytes,
    );
    windowGauge(
      "shinkei_wal_disk_full",
      "1 when the WAL spool's disk has less free space than one segment: the receiver cannot write the next one",
      (w) => (w.diskFull ? 1 : 0),
    );
    windowGauge(
      "shinkei_wal_refused_partials",
      "Partial segments in the spool pg_receivewal refuses to resume from (neither empty nor whole)",
      (w) => w.refusedPartials,
    );
    /** The receiver and its slot (only where a source reports them: the database, with the archive on). */
    const receiverGauge = (
      name: string,
      help: string,
      labelNames: string[],
      set: (g: Gauge<string>, r: NonNullable<Facts["receiver"]>) => void,
    ) =>
      new Gauge({
        name,
        help,
        labelNames,
        registers,
        async collect() {
          this.reset();
          const r = (await self.facts()).receiver;
          if (r) set(this, r);
        },
      });
    receiverGauge(
      "shinkei_wal_receiver_connected",
      "Whether the WAL receiver is streaming from the server now (pg_stat_replication)",
      [],
      (g, r) => g.set(r.connected ? 1 : 0),
    );
    receiverGauge(
      "shinkei_wal_archive_lag_bytes",
      "WAL the server has written that the archive has not received",
      [],
      (g, r) => g.set(r.lagBytes),
    );
    receiverGauge(
      "shinkei_wal_archive_lag_seconds",
      "How far the archive trails the server in time: 0 when nothing is missing, +Inf when nothing was ever received",
      [],
      (g, r) => g.set(r.lagSeconds),
    );
    receiverGauge(
      "shinkei_wal_slot_active",
      "Whether a receiver holds the replication slot (WAL_SLOT)",
      ["slot"],
      (g, r) => r.slot && g.set({ slot: r.slot.name }, r.slot.active ? 1 : 0),
    );
    receiverGauge(
      "shinkei_wal_slot_status",
      "The slot's wal_status as one series per status, 1 for the current one: unreserved or lost means WAL " +
        "the archive needs is going or gone",
      ["slot", "status"],
      (g, r) => {
        if (!r.slot) return;
        for (const status of ["reserved", "extended", "unreserved", "lost"])
          g.set({ slot: r.slot.name, status }, r.slot.walStatus === status ? 1 : 0);
      },
    );
    receiverGauge(
      "shinkei_wal_slot_safe_wal_size_bytes",
      "WAL the server may still write before the slot loses some (max_slot_wal_keep_size)",
      ["slot"],
      (g, r) => {
        if (r.slot && r.slot.safeWalSize !== null) g.set({ slot: r.slot.name }, r.slot.safeWalSize);
      },
    );
    new Gauge({
      name: "shinkei_backup_source_up",
      help: "Whether each source of backup facts could be read at this scrape",
      labelNames: ["source"],
      registers,
      async collect() {
        this.reset();
        await self.facts();
        for (const s of self.sources) this.set({ source: s.name }, self.failedSources.includes(s.name) ? 0 : 1);
      },
    });
  }
}
