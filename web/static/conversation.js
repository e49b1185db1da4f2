// The conversation log and the state indicator. The log lives in the page and in sessionStorage,
// so it survives reconnects and reloads of the same tab (the server's memory of it does not).
'use strict';
const LOG_KEY = 'voice.log';
const STATE_LABELS = {
  off: 'Microphone off',
  listening: 'Listening',
  hearing: 'Hearing you',
  thinking: 'Thinking',
  speaking: 'Speaking',
  interrupted: 'Interrupted',
};

class StateIndicator {
  /** Shows one state at a time and records the sequence it showed (voiceStats.states). */
  constructor(el, history) { this.el = el; this.history = history; this.name = null; this.set('off'); }

  set(name) {
    if (name === this.name) return;
    this.name = name;
    this.history.push(name);
    this.el.dataset.state = name;
    this.el.querySelector('.state-label').textContent = STATE_LABELS[name];
  }
}

class ConversationLog {
  /** Entries {role: user|assistant|note, text, partial?, interrupted?, shortened?, metrics?}, rendered in order. */
  constructor(listEl, stats) {
    this.listEl = listEl; this.stats = stats;
    this.entries = []; this.userDraft = null; this.reply = null;
    try { this.entries = JSON.parse(sessionStorage.getItem(LOG_KEY) || '[]'); } catch (e) { this.entries = []; }
    this.entries = this.entries.filter((e) => !e.partial);
    if (this.entries.length) this.entries.push({ role: 'note', text: 'Page reloaded: a new session, the assistant does not remember the turns above.' });
    this.render();
  }

  /** The partial transcript, shown live in a user entry that the final replaces. */
  partial(text) {
    if (!this.userDraft) this.userDraft = this.add({ role: 'user', text: '', partial: true });
    this.userDraft.text = text;
    this.changed();
  }

  /** The final transcript: the user entry; an empty one (not speech) removes the draft. */
  final(text) {
    if (!text) {
      if (this.userDraft) this.entries.splice(this.entries.indexOf(this.userDraft), 1);
    } else if (this.userDraft) {
      Object.assign(this.userDraft, { text, partial: false });
    } else this.add({ role: 'user', text });
    this.userDraft = null;
    this.changed();
  }

  /** The next piece of the reply. */
  replyText(text) {
    if (!this.reply) this.reply = this.add({ role: 'assistant', text: '' });
    this.reply.text += text;
    this.changed();
  }

  /** The turn ended: mark the reply interrupted or shortened and attach its metrics. */
  turnEnd(msg) {
    const m = msg.metrics;
    if (!this.reply && (msg.reply || m.interrupted)) this.reply = this.add({ role: 'assistant', text: msg.reply || '' });
    if (this.reply) Object.assign(this.reply, { interrupted: m.interrupted, shortened: m.shortened, metrics: m });
    this.reply = null;
    this.changed();
  }

  note(text) { this.add({ role: 'note', text }); this.changed(); }

  clear() { this.entries = []; this.userDraft = this.reply = null; this.changed(); }

  add(entry) { this.entries.push(entry); return entry; }

  changed() {
    try { sessionStorage.setItem(LOG_KEY, JSON.stringify(this.entries)); } catch (e) { /* storage full or off */ }
    this.render();
  }

  render() {
    this.stats.log = this.entries.filter((e) => !e.partial && e.role !== 'note').map((e) => ({ role: e.role, text: e.text }));
    this.listEl.replaceChildren(...this.entries.map(entryElement));
    this.listEl.lastElementChild?.scrollIntoView({ block: 'nearest' });
  }
}

function entryElement(e) {
  const li = document.createElement('li');
  li.className = `entry ${e.role}` + (e.partial ? ' partial' : '');
  if (e.role !== 'note') {
    const who = document.createElement('span');
    who.className = 'who';
    who.textContent = e.role === 'user' ? 'You' : 'Assistant';
    li.append(who);
  }
  const text = document.createElement('p');
  text.className = 'text';
  text.textContent = e.text || (e.role === 'assistant' ? '…' : '');
  li.append(text);
  if (e.interrupted) li.append(mark('interrupted', '(interrupted)'));
  if (e.shortened) li.append(mark('shortened', '(shortened — say “tell me more”)'));
  if (e.metrics) li.append(waterfallFigure(e.metrics));
  return li;
}

function mark(cls, text) {
  const p = document.createElement('p');
  p.className = `mark ${cls}`;
  p.textContent = text;
  return p;
}
