// Microphone capture: resample the context rate to 16 kHz mono and post 20 ms int16 frames.
class CaptureProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.step = sampleRate / 16000;  // input samples per output sample
    this.pos = 0;                    // fractional read position in the current block
    this.prev = 0;                   // last sample of the previous block (for interpolation)
    this.out = new Int16Array(320);
    this.n = 0;
  }
  process(inputs) {
    const input = inputs[0] && inputs[0][0];
    if (!input) return true;
    let pos = this.pos;
    while (pos < input.length) {
      const i = Math.floor(pos), frac = pos - i;
      const a = i === 0 ? this.prev : input[i - 1], b = input[i];
      const s = Math.max(-1, Math.min(1, a + (b - a) * frac));
      this.out[this.n++] = s * 32767;
      if (this.n === this.out.length) {
        this.port.postMessage(this.out.buffer, [this.out.buffer]);
        this.out = new Int16Array(320);
        this.n = 0;
      }
      pos += this.step;
    }
    this.pos = pos - input.length;
    this.prev = input[input.length - 1];
    return true;
  }
}
registerProcessor('capture-processor', CaptureProcessor);
