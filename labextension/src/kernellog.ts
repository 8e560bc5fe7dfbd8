// The last events of the current notebook's kernel, for the dialog. Each kernel keeps its own log
// in memory only (what `%clacky_telemetry log` shows); the server has none, so the dialog asks the
// kernel itself through a comm that clacky_ipy registers when it is loaded there.

import { INotebookTracker } from '@jupyterlab/notebook';

/** One entry of `clacky_ipy.recent()`. */
export interface IEvent {
  time: number;
  event: string;
  path: string;
  payload: string | null;
  outcome: string;
}

/** The events, or why there are none to show. */
export interface LogAnswer {
  events: IEvent[];
  message: string | null;
}

/** The comm target clacky_ipy registers in a kernel (clacky_ipy/logcomm.py). */
export const TARGET = 'clacky_telemetry_log';
/** How many events to ask for, and how long a busy kernel may take to answer. */
const COUNT = 20;
const WAIT_MS = 3000;
const HOW = 'Run %clacky_telemetry log in a notebook to see what its kernel sent.';

export async function lastEvents(notebooks: INotebookTracker | null): Promise<LogAnswer> {
  const kernel = notebooks?.currentWidget?.sessionContext.session?.kernel;
  if (!kernel || kernel.status === 'dead') {
    return { events: [], message: `No notebook with a running kernel is active. ${HOW}` };
  }
  return new Promise<LogAnswer>(resolve => {
    let done = false;
    const finish = (answer: LogAnswer) => {
      if (!done) {
        done = true;
        window.clearTimeout(timer);
        resolve(answer);
      }
    };
    const comm = kernel.createComm(TARGET);
    const timer = window.setTimeout(() => {
      finish({ events: [], message: `The notebook’s kernel did not answer (busy?). ${HOW}` });
    }, WAIT_MS);
    comm.onMsg = msg => {
      const data = msg.content.data as { events?: IEvent[] };
      const events = Array.isArray(data?.events) ? data.events : [];
      finish({
        events,
        message: events.length ? null : 'The notebook’s kernel has sent nothing yet.'
      });
    };
    comm.onClose = () => {
      finish({
        events: [],
        message: `This notebook’s kernel has not loaded clacky_ipy (%load_ext clacky_ipy). ${HOW}`
      });
    };
    try {
      comm.open({ n: COUNT });
    } catch {
      finish({ events: [], message: HOW });
    }
  });
}
