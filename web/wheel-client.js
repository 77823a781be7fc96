// wheel-client.js: a dependency-free browser client for wheel-server's
// pub/sub service over WebSocket. No build step: import it as an ES module.
//
//   import { WheelClient } from "./wheel-client.js";
//   const client = new WheelClient("ws://127.0.0.1:5006/ws", { interval: 5000 });
//   client.on("message", (m) => console.log(m.topic, m.seq, m.payload));
//   client.subscribe("news");
//   client.start();
//
// What it does, as the Rust client (src/client) does for TCP:
//
// * Application heartbeat. JavaScript cannot send WebSocket pings, so after
//   `interval` ms without any message from the server it sends the pub/sub
//   command `PING <n>` and waits `timeout` ms for anything to come back.
//   After `retries` such pings go unanswered the server is declared dead
//   (event "dead"): at most interval + timeout * retries after the last
//   sign of life. Any message from the server counts as one.
// * Reconnect with capped exponential backoff and full jitter: the n-th
//   attempt waits a random time in [0, min(backoffCap, backoffBase * 2^n)),
//   so a fleet of pages does not come back in lockstep after a restart.
// * Resume. The client remembers the last sequence number it saw on each
//   topic and re-subscribes with `SUB <topic> <since>`: the server replays
//   what it retained after it, so nothing within history is lost. A
//   duplicate (seq not after the last seen) is dropped; a `gap` answer (the
//   server restarted, or history no longer reaches back) is reported and
//   the count starts over where the server says.
//
// Events (client.on(name, fn)); every handler gets one object:
//   state       {state}            connecting | open | closed | stopped
//   open        {attempt}
//   subscribed  {topic, last, resumed, gap}
//   message     {topic, seq, payload}
//   duplicate   {topic, seq}
//   gap         {topic, first}
//   heartbeat   {sent}            a PING went out
//   dead        {silentMs}        no answer to `retries` PINGs
//   closed      {code, reason}    the socket closed (1006: without a Close)
//   reconnect   {attempt, delayMs}
//   published   {topic, seq}
//   presence    {topic, change, conn, user, reason}   with subscribe(topic,
//               {presence: true}): change is join | leave | online |
//               offline | overflow; user null without authentication;
//               reason (leave, offline) says why: closed, idle_timeout, ...;
//               change member: one already there when the subscription was
//               made (the answer to the WHO sent then)
//   members     {topic, connections, users, more}   the end of a page of
//               that answer (--presence-page members at most); with more, the client
//               asks for the next page itself
//   error       {text}            an ERR answer
//   data        {text}            anything else from the server

export class WheelClient {
  /**
   * @param {string} url  ws:// or wss:// URL of a wheel-server WebSocket
   *   listener running `--service pubsub`.
   * @param {object} [options]
   * @param {number} [options.interval=5000]   ms of silence before a PING
   * @param {number} [options.timeout=2000]    ms to wait for its answer
   * @param {number} [options.retries=2]       unanswered PINGs until dead
   * @param {number} [options.backoffBase=250] ms, first reconnect ceiling
   * @param {number} [options.backoffCap=10000] ms, largest reconnect ceiling
   */
  constructor(url, options = {}) {
    this.url = url;
    this.options = {
      interval: 5000,
      timeout: 2000,
      retries: 2,
      backoffBase: 250,
      backoffCap: 10000,
      ...options,
    };
    /** topic -> last sequence number seen (null: none yet) */
    this.topics = new Map();
    // Topics whose joins and leaves are watched.
    this.presence = new Set();
    // The last member a WHO page listed, per topic: where the next starts.
    this.whoLast = new Map();
    this.handlers = new Map();
    this.ws = null;
    this.state = "stopped";
    this.attempt = 0;
    this.unanswered = 0;
    this.pings = 0;
    this.lastHeard = 0;
    this.timer = null;
    this.reconnectTimer = null;
  }

  /** Registers `fn` for event `name`; returns this. */
  on(name, fn) {
    if (!this.handlers.has(name)) this.handlers.set(name, []);
    this.handlers.get(name).push(fn);
    return this;
  }

  emit(name, detail) {
    for (const fn of this.handlers.get(name) || []) fn(detail);
    for (const fn of this.handlers.get("*") || []) fn({ event: name, ...detail });
  }

  setState(state) {
    if (this.state !== state) {
      this.state = state;
      this.emit("state", { state });
    }
  }

  /** Connects, and keeps reconnecting until stop(). */
  start() {
    this.stopped = false;
    this.connect();
  }

  /** Closes (1000) and stops reconnecting. */
  stop() {
    this.stopped = true;
    clearTimeout(this.reconnectTimer);
    this.drop(1000, "bye");
    this.setState("stopped");
  }

  /**
   * Subscribes to `topic` now (if open) and after every reconnect; with
   * `{presence: true}`, also watches who joins and leaves it ("presence"
   * events).
   */
  subscribe(topic, { presence = false } = {}) {
    if (!this.topics.has(topic)) this.topics.set(topic, null);
    if (presence) this.presence.add(topic);
    if (this.state === "open") this.sendSub(topic);
  }

  /** Publishes `payload` on `topic`; false if not connected. */
  publish(topic, payload) {
    return this.send(`PUB ${topic} ${payload}`);
  }

  /** Sends a raw command; false if not connected. */
  send(text) {
    if (this.state !== "open") return false;
    this.ws.send(text);
    return true;
  }

  connect() {
    this.setState("connecting");
    let ws;
    try {
      ws = new WebSocket(this.url);
    } catch (e) {
      this.emit("closed", { code: 1006, reason: String(e) });
      this.scheduleReconnect();
      return;
    }
    this.ws = ws;
    ws.onopen = () => {
      if (this.ws !== ws) return;
      this.emit("open", { attempt: this.attempt });
      this.attempt = 0;
      this.setState("open");
      this.heard();
      for (const topic of this.topics.keys()) this.sendSub(topic);
    };
    ws.onmessage = (event) => {
      if (this.ws !== ws) return;
      this.heard();
      this.handle(typeof event.data === "string" ? event.data : "");
    };
    ws.onclose = (event) => {
      if (this.ws !== ws) return;
      this.ws = null;
      clearTimeout(this.timer);
      this.emit("closed", { code: event.code, reason: event.reason });
      this.setState("closed");
      this.scheduleReconnect();
    };
    // An error is always followed by a close.
    ws.onerror = () => {};
  }

  sendSub(topic) {
    const last = this.topics.get(topic);
    const watch = this.presence.has(topic) ? " presence" : "";
    this.ws.send((last === null ? `SUB ${topic}` : `SUB ${topic} ${last}`) + watch);
  }

  /** A sign of life: the heartbeat starts over. */
  heard() {
    this.lastHeard = Date.now();
    this.unanswered = 0;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.ping(), this.options.interval);
  }

  ping() {
    if (this.unanswered >= this.options.retries) {
      const silentMs = Date.now() - this.lastHeard;
      this.emit("dead", { silentMs });
      // A dead peer never completes a closing handshake: let the socket go
      // and reconnect now.
      this.drop(4000, "server not answering");
      this.setState("closed");
      this.scheduleReconnect();
      return;
    }
    this.unanswered += 1;
    this.pings += 1;
    this.send(`PING ${this.pings}`);
    this.emit("heartbeat", { sent: this.pings });
    this.timer = setTimeout(() => this.ping(), this.options.timeout);
  }

  /** Forgets the current socket, closing it if it can. */
  drop(code, reason) {
    clearTimeout(this.timer);
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      try {
        ws.close(code, reason);
      } catch (e) {
        // Already closing.
      }
    }
  }

  scheduleReconnect() {
    if (this.stopped) return;
    const { backoffBase, backoffCap } = this.options;
    const ceiling = Math.min(backoffCap, backoffBase * 2 ** this.attempt);
    const delayMs = Math.floor(Math.random() * ceiling);
    this.attempt += 1;
    this.emit("reconnect", { attempt: this.attempt, delayMs });
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = setTimeout(() => this.connect(), delayMs);
  }

  handle(text) {
    const words = text.split(" ");
    if (words[0] === "MSG" && words.length >= 3) {
      const topic = words[1];
      const seq = Number(words[2]);
      const payload = words.slice(3).join(" ");
      const last = this.topics.get(topic);
      if (last !== undefined && last !== null && seq <= last) {
        this.emit("duplicate", { topic, seq });
        return;
      }
      if (this.topics.has(topic)) this.topics.set(topic, seq);
      this.emit("message", { topic, seq, payload });
    } else if (words[0] === "OK" && words[1] === "SUB") {
      // OK SUB <topic> <last> [recovered | gap <first>]
      const topic = words[2];
      const last = Number(words[3]);
      const gap = words[4] === "gap" ? Number(words[5]) : null;
      const resumed = words[4] === "recovered" || gap !== null;
      if (gap !== null) {
        this.emit("gap", { topic, first: gap });
        this.topics.set(topic, gap - 1);
      } else if (this.topics.get(topic) === null) {
        this.topics.set(topic, last);
      }
      this.emit("subscribed", { topic, last, resumed, gap });
      // Who was there already: the events only say who comes and goes.
      if (this.presence.has(topic)) this.send(`WHO ${topic}`);
    } else if (words[0] === "MEMBER" && this.presence.has(words[1])) {
      // MEMBER <topic> <conn> <user> <since-ms>
      this.whoLast.set(words[1], words[2]);
      this.emit("presence", {
        topic: words[1],
        change: "member",
        conn: words[2],
        user: words[3] === "-" ? null : decodeURIComponent(words[3]),
        reason: null,
      });
    } else if (words[0] === "OK" && words[1] === "WHO" && this.presence.has(words[2])) {
      // OK WHO <topic> <connections> <users> [more]
      this.emit("members", {
        topic: words[2],
        connections: Number(words[3]),
        users: Number(words[4]),
        more: words[5] === "more",
      });
      // A page of 100 at most: the next one starts after its last member.
      if (words[5] === "more" && this.whoLast.has(words[2])) {
        this.send(`WHO ${words[2]} ${this.whoLast.get(words[2])}`);
      }
    } else if (words[0] === "GAP" && this.topics.has(words[1])) {
      // GAP <topic> <first-missing>: lost from there on; GAP <topic> 1: the
      // topic's numbering started over (its next numbers are new messages).
      const first = Number(words[2]);
      this.emit("gap", { topic: words[1], first });
      this.topics.set(words[1], first - 1);
    } else if (
      ["JOIN", "LEAVE", "ONLINE", "OFFLINE", "PRESENCE"].includes(words[0]) &&
      this.presence.has(words[1])
    ) {
      // JOIN <topic> <conn> <user> | LEAVE <topic> <conn> <user> <reason> |
      // ONLINE <topic> <user> | OFFLINE <topic> <user> <reason> |
      // PRESENCE <topic> overflow
      const user = (u) => (u === undefined || u === "-" ? null : decodeURIComponent(u));
      const byConn = words[0] === "JOIN" || words[0] === "LEAVE";
      this.emit("presence", {
        topic: words[1],
        change: words[0] === "PRESENCE" ? "overflow" : words[0].toLowerCase(),
        conn: byConn ? words[2] : null,
        user: words[0] === "PRESENCE" ? null : user(byConn ? words[3] : words[2]),
        reason: (byConn ? words[4] : words[3]) || null,
      });
    } else if (words[0] === "OK" && words[1] === "PUB") {
      this.emit("published", { topic: words[2], seq: Number(words[3]) });
    } else if (words[0] === "PONG") {
      // The heartbeat's answer: heard() already counted it.
    } else if (words[0] === "ERR") {
      this.emit("error", { text });
    } else {
      this.emit("data", { text });
    }
  }
}
