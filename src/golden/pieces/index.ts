/** The golden pieces this build can check, by manifest name. */
import type { RunnerTable } from '../run.js';

export const RUNNERS: RunnerTable = {};
