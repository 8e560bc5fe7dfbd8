// clacky-ipy in JupyterLab and Notebook 7: whether OpenClacky telemetry is on, what decided it,
// what is sent, and the switch, from the status bar, a menu, the command palette and the first-run
// notification. Everything comes from the clacky_ipy Jupyter Server extension (/clacky-telemetry/*),
// the same state as `clacky-ipy telemetry status`; without that extension nothing is shown.

import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { Dialog, ICommandPalette, Notification, showDialog } from '@jupyterlab/apputils';
import { PageConfig, URLExt } from '@jupyterlab/coreutils';
import { INotebookTracker } from '@jupyterlab/notebook';
import { ServerConnection } from '@jupyterlab/services';
import { IStatusBar } from '@jupyterlab/statusbar';
import { Signal } from '@lumino/signaling';
import { Widget } from '@lumino/widgets';

import { lastEvents, LogAnswer } from './kernellog';

/** What GET /clacky-telemetry/status answers (clacky_ipy/serverext.py: status_json). */
export interface IStatus {
  version: string;
  on: boolean;
  off_reason: string | null;
  decided_by: string | null;
  switchable: boolean;
  saved_choice: string | null;
  saved_off: boolean;
  endpoint: string;
  fallback_endpoints: string[];
  device_id: string | null;
  device_id_source: string | null;
  device_text: string;
  notice_seen: boolean;
  notice: string;
  docs_url: string;
  scope: string;
  text: string;
}

const PLUGIN_ID = 'clacky-ipy:plugin';
const SHOW = 'clacky-ipy:show';
const TOGGLE = 'clacky-ipy:toggle';
/** The page-config key the server extension sets: its presence means the handlers exist. */
const PAGE_CONFIG_KEY = 'clackyTelemetry';
/** How often the item re-reads the state (a shell or a kernel may switch it meanwhile). */
const REFRESH_MS = 30000;
/** Short names of the switches that force telemetry off, for the item's text. */
const SHORT: Record<string, string> = {
  'policy file': 'policy',
  environment: 'environment',
  config: 'config'
};

async function call(path: string, body?: object): Promise<{ code: number; data: any }> {
  const settings = ServerConnection.makeSettings();
  const url = URLExt.join(settings.baseUrl, 'clacky-telemetry', path);
  const init: RequestInit = body
    ? { method: 'POST', body: JSON.stringify(body) }
    : { method: 'GET' };
  const response = await ServerConnection.makeRequest(url, init, settings);
  let data: any = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  return { code: response.status, data };
}

/** The item's text: "Telemetry: on", "Telemetry: off", "Telemetry: off (policy)". */
export function label(status: IStatus): string {
  if (status.on) {
    return 'Telemetry: on';
  }
  const short = status.decided_by ? SHORT[status.decided_by] : undefined;
  return short ? `Telemetry: off (${short})` : 'Telemetry: off';
}

/** The notice's text for a proportional font: its hard-wrapped lines joined where a line continues
 * the sentence before (it starts with a lower-case letter or a parenthesis); "Details:" and
 * "Opt out:" stay lines of their own. */
export function reflow(text: string): string {
  return text.replace(/\n(?=[a-z(])/g, ' ');
}

/** The shared state: the last status read, and a signal when it changes. */
class Model {
  status: IStatus | null = null;
  readonly changed = new Signal<Model, void>(this);

  get available(): boolean {
    return this.status !== null;
  }

  async refresh(): Promise<void> {
    try {
      const { code, data } = await call('status');
      if (code === 200 && data) {
        this.set(data as IStatus);
      }
    } catch {
      // the server went away: keep showing the last state
    }
  }

  /** The saved choice; the answer (with the reason when the switch is refused). */
  async switch(enabled: boolean): Promise<string | null> {
    return this.post('switch', { enabled });
  }

  async answerNotice(answer: 'keep' | 'off' | 'dismissed'): Promise<string | null> {
    return this.post('notice', { answer });
  }

  private async post(path: string, body: object): Promise<string | null> {
    try {
      const { code, data } = await call(path, body);
      const status = code === 200 ? data : data?.status;
      if (status) {
        this.set(status as IStatus);
      }
      return code === 200 ? null : (data?.message ?? `the server answered ${code}`);
    } catch (error) {
      return `the server could not be reached: ${error}`;
    }
  }

  private set(status: IStatus): void {
    this.status = status;
    this.changed.emit();
  }
}

/** The status-bar item: a text that opens the dialog. */
class StatusItem extends Widget {
  constructor(model: Model, open: () => void) {
    super();
    this.id = 'clacky-telemetry-status';
    this.addClass('clacky-telemetry-item');
    this.addClass('jp-StatusBar-TextItem');
    this.node.setAttribute('role', 'button');
    this.node.tabIndex = 0;
    this.node.addEventListener('click', open);
    this.node.addEventListener('keydown', (event: KeyboardEvent) => {
      if (event.key === 'Enter' || event.key === ' ') {
        open();
      }
    });
    model.changed.connect(() => this.render(model));
  }

  private render(model: Model): void {
    const status = model.status;
    if (!status) {
      return;
    }
    this.node.textContent = label(status);
    this.node.title = status.on
      ? 'OpenClacky usage telemetry (clacky-ipy) is on: click to see what is sent and switch it off'
      : `OpenClacky usage telemetry (clacky-ipy) is off: ${status.off_reason}`;
    this.node.dataset.state = status.on ? 'on' : 'off';
  }
}

function element<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  className: string,
  text?: string
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  node.className = className;
  if (text !== undefined) {
    node.textContent = text;
  }
  return node;
}

/** The dialog's body: state, switch, what is sent, device id, the notebook kernel's last events. */
class Panel extends Widget {
  private readonly state = element('p', 'clacky-telemetry-state');
  private readonly toggle = document.createElement('input');
  private readonly problem = element('p', 'clacky-telemetry-problem');
  private readonly device = element('p', 'clacky-telemetry-device');
  private readonly notice = element('div', 'clacky-telemetry-notice');
  private readonly docs = element('a', 'clacky-telemetry-docs', 'What is sent, in the README');
  private readonly events = element('div', 'clacky-telemetry-events');
  private readonly scope = element('p', 'clacky-telemetry-scope');

  constructor(
    private readonly model: Model,
    log: Promise<LogAnswer>
  ) {
    super();
    this.addClass('clacky-telemetry-dialog');
    const switchRow = element('label', 'clacky-telemetry-switch');
    this.toggle.type = 'checkbox';
    this.toggle.id = 'clacky-telemetry-switch';
    this.toggle.setAttribute('role', 'switch');
    switchRow.append(this.toggle, ' Send usage telemetry');
    this.toggle.addEventListener('change', () => void this.flip());
    this.docs.target = '_blank';
    this.docs.rel = 'noopener noreferrer';
    this.node.append(
      this.state,
      switchRow,
      this.problem,
      element('h3', '', 'What is sent (the first-run notice)'),
      this.notice,
      this.docs,
      element('h3', '', 'Device id'),
      this.device,
      element('h3', '', 'Last events'),
      this.events,
      this.scope
    );
    this.events.textContent = 'Asking the notebook’s kernel…';
    model.changed.connect(this.render, this);
    this.render();
    void log.then(answer => this.showEvents(answer));
  }

  dispose(): void {
    this.model.changed.disconnect(this.render, this);
    super.dispose();
  }

  private render(): void {
    const status = this.model.status;
    if (!status) {
      return;
    }
    this.state.textContent = status.on
      ? 'Telemetry is on.'
      : `Telemetry is off: ${status.off_reason}.`;
    this.toggle.checked = status.on;
    this.toggle.disabled = !status.switchable;
    this.toggle.title = status.switchable
      ? 'Saved for every later session, as `clacky-ipy telemetry on|off`'
      : `The ${status.decided_by} decides; this switch cannot change it`;
    if (!status.switchable) {
      this.problem.textContent = `The ${status.decided_by} keeps it off; no switch here can change that.`;
    }
    this.notice.textContent = reflow(status.notice);
    this.docs.href = status.docs_url;
    this.device.textContent = status.device_id
      ? `${status.device_id}: ${status.device_id_source}`
      : status.device_text;
    this.scope.textContent = status.scope;
  }

  private async flip(): Promise<void> {
    this.toggle.disabled = true;
    const problem = await this.model.switch(this.toggle.checked);
    this.problem.textContent = problem ?? '';
    this.render();
  }

  private showEvents(answer: LogAnswer): void {
    this.events.textContent = '';
    if (answer.message) {
      this.events.append(element('p', 'clacky-telemetry-events-note', answer.message));
      return;
    }
    const list = element('ol', 'clacky-telemetry-events-list');
    for (const event of answer.events) {
      const item = element('li', '');
      const when = new Date(event.time * 1000).toLocaleTimeString();
      item.append(element('span', '', `${when} ${event.event} ${event.path}: ${event.outcome}`));
      if (event.payload) {
        item.append(element('code', 'clacky-telemetry-payload', event.payload));
      }
      list.append(item);
    }
    this.events.append(list);
  }
}

/** The first-run notice as a notification, once: it counts as seen when answered or closed. */
function notify(model: Model, open: () => void): void {
  const status = model.status;
  if (!status || status.notice_seen || !status.on) {
    return;
  }
  let answered = false;
  const answer = (value: 'keep' | 'off' | 'dismissed') => {
    if (!answered) {
      answered = true;
      void model.answerNotice(value);
    }
  };
  const id = Notification.emit(
    'OpenClacky usage telemetry (clacky-ipy) is on: it sends a pseudonymous device id, versions ' +
      'and agent-run metrics, never your code, outputs or paths.',
    'info',
    {
      autoClose: false,
      actions: [
        { label: 'Keep on', callback: () => answer('keep'), displayType: 'accent' },
        { label: 'Turn off', callback: () => answer('off'), displayType: 'warn' },
        {
          label: 'Details',
          callback: (event: Event) => {
            event.preventDefault(); // the notification stays until answered
            open();
          },
          displayType: 'link'
        }
      ]
    }
  );
  Notification.manager.changed.connect((_, change) => {
    if (change.type === 'removed' && change.notification.id === id) {
      answer('dismissed');
    }
  });
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description: 'OpenClacky telemetry: see it and switch it',
  autoStart: true,
  optional: [IStatusBar, ICommandPalette, INotebookTracker],
  activate: (
    app: JupyterFrontEnd,
    statusBar: IStatusBar | null,
    palette: ICommandPalette | null,
    notebooks: INotebookTracker | null
  ) => {
    if (!PageConfig.getOption(PAGE_CONFIG_KEY)) {
      return; // the server extension is not enabled: nothing to show, nothing to ask
    }
    const model = new Model();
    let dialogOpen = false;
    const open = () => {
      if (dialogOpen || !model.status) {
        return;
      }
      dialogOpen = true;
      void model.refresh();
      const body = new Panel(model, lastEvents(notebooks));
      void showDialog({
        title: 'Clacky telemetry',
        body,
        buttons: [Dialog.okButton({ label: 'Close' })]
      }).finally(() => {
        dialogOpen = false;
      });
    };

    app.commands.addCommand(SHOW, {
      label: () => (model.status ? `Clacky ${label(model.status)}…` : 'Clacky telemetry…'),
      caption: 'Whether OpenClacky usage telemetry is on, what is sent, and the switch',
      isVisible: () => model.available,
      execute: open
    });
    app.commands.addCommand(TOGGLE, {
      label: () =>
        model.status?.on === false ? 'Turn clacky telemetry on' : 'Turn clacky telemetry off',
      caption: 'The saved choice, as `clacky-ipy telemetry on|off`',
      isVisible: () => model.available,
      isEnabled: () => model.status?.switchable === true,
      execute: async () => {
        const problem = await model.switch(!model.status?.on);
        if (problem) {
          Notification.warning(`Clacky telemetry: ${problem}`, { autoClose: 5000 });
        }
      }
    });
    palette?.addItem({ command: SHOW, category: 'Clacky telemetry' });
    palette?.addItem({ command: TOGGLE, category: 'Clacky telemetry' });

    if (statusBar) {
      const item = new StatusItem(model, open);
      const activeChanged = new Signal<any, void>(model);
      statusBar.registerStatusItem(PLUGIN_ID, {
        item,
        align: 'left',
        rank: 1000,
        isActive: () => model.available,
        activeStateChanged: activeChanged
      });
      model.changed.connect(() => activeChanged.emit());
    }
    model.changed.connect(() => {
      app.commands.notifyCommandChanged(SHOW);
      app.commands.notifyCommandChanged(TOGGLE);
    });

    // After the application is restored, and not awaited (awaiting it in activate deadlocks the
    // start-up): the page's own requests come first, the item appears a moment later.
    void app.restored.then(() => model.refresh()).then(() => notify(model, open));
    window.setInterval(() => void model.refresh(), REFRESH_MS);
    document.addEventListener('visibilitychange', () => {
      if (document.visibilityState === 'visible') {
        void model.refresh();
      }
    });
  }
};

export default plugin;
