// Keyboard navigation of a gitferry status page, as a keyboard user meets it: open the page
// (HTTP Basic credentials from the environment), press Tab through it, and report every element
// that took focus, whether it showed a focus outline, and whether Enter on the skip link moves
// focus to the content. Prints JSON; the Rust test (tests/tests/pages.rs) asserts on it.
import { chromium } from 'playwright-core';

const [url] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
try {
  const context = await browser.newContext({
    httpCredentials: { username: process.env.PAGE_USER, password: process.env.PAGE_PASSWORD },
  });
  const page = await context.newPage();
  const response = await page.goto(url);
  const focused = [];
  for (let i = 0; i < 40; i++) {
    await page.keyboard.press('Tab');
    const info = await page.evaluate(() => {
      const e = document.activeElement;
      if (!e || e === document.body) return null;
      const style = getComputedStyle(e);
      return {
        tag: e.tagName.toLowerCase(),
        text: (e.innerText || e.value || e.getAttribute('aria-label') || '').trim().slice(0, 60),
        href: e.getAttribute('href'),
        outline: style.outlineStyle !== 'none' && parseFloat(style.outlineWidth) > 0,
      };
    });
    if (info) focused.push(info);
  }
  // The skip link: the first stop, and Enter takes the focus to the content.
  await page.goto(url);
  await page.keyboard.press('Tab');
  await page.keyboard.press('Enter');
  const afterSkip = await page.evaluate(() => location.hash);
  console.log(JSON.stringify({ status: response.status(), focused, afterSkip }));
} finally {
  await browser.close();
}
